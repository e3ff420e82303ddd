"""The CaseOps test corpus (conftest's `caseops_dataset`): hostile validation documents, three poems to train on."""

VAL_DOCS = ["The NASA McDonald iPhone ÉCOLE naïve Ωmega 中文 😀 e\u0301 12345\ttab",
            "\ue001 literal operators \ue004\ue002 and \ue000 stay; MiXeD CaSe WoRdS",
            "  Leading spaces, a blank line\n\n\nand trailing ones  \n",
            "x"]
TRAIN_PLAYS = ("passionate_pilgrim_gut.txt", "phoenix_and_the_turtle_gut.txt", "lovers_complaint_gut.txt")
