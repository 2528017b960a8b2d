# Stratolab kernels: the %%function cell magic is available without %load_ext.
c = get_config()  # noqa: F821
c.InteractiveShellApp.extensions = ["stratolab.functions.magic"]
