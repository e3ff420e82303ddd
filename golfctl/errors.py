"""Errors a user can cause. The CLI prints them as one `Error: …` line with no traceback."""

EXIT_USER_ERROR = 1
EXIT_OVER_BUDGET = 3


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and how to fix it."""

    exit_code = EXIT_USER_ERROR


def refuse_problems(problems: list[str]) -> None:
    """Every problem of a stage's settings in one user error (none: nothing happens)."""
    if problems:
        raise UserError("; ".join(problems))
