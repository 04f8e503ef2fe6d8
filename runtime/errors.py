"""User-facing errors: each message names the problem and the fix; the CLIs print them as one line."""


class OmniError(Exception):
    """A problem the user can fix (bad input, missing or incompatible bundle)."""


class BundleError(OmniError):
    """The bundle folder is missing, incomplete, corrupted or from another format version."""
