"""Python layer files and their environments: saving and unpacking uploads, layer environments (pip packages), diagnostics and the gradient-check policy."""
