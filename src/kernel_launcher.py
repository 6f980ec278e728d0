# The start of an ipykernel twin (isolate-grade's src/kernel_launcher.py, run as `python -c`):
# what `python -m ipykernel_launcher` does, without the Jupyter debugger. ipykernel imports
# debugpy when it creates its kernel, about 65 ms of CPU per kernel (a quarter of its start),
# and no one debugs a notebook being graded. Its modules can't be imported while the kernel
# is set up; afterwards a notebook imports debugpy as usual.
import sys


class NoDebugger:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("debugpy", "_pydevd_bundle", "pydevd"):
            raise ImportError(f"{name}: the Jupyter debugger is not loaded while grading")
        return None


# as ipykernel_launcher: the working directory is not on sys.path while ipykernel loads
if sys.path[0] == "":
    del sys.path[0]
hook = NoDebugger()
sys.meta_path.insert(0, hook)
from ipykernel import kernelapp  # noqa: E402

app = kernelapp.IPKernelApp.instance()
app.initialize()
sys.meta_path.remove(hook)
del hook, NoDebugger
app.start()
