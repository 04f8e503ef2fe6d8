"""int8 / int4 passes over exported bundles (see the int8 issue); nothing here yet."""
