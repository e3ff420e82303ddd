"""Pipeline stages: one module per stage, each with one entry function; files on disk are the only hand-off."""
