# The interpreter of a prepared sandbox (automa-runner, src/warm.rs). Started in place of a script, fully
# confined, it waits on stdin for the one run it serves, then becomes that run as `python <script> <args>`
# would have started it: same argv, environment, rlimits, `__main__`, sys.path, tracebacks and exit status.
# Everything it defines lives in this module's namespace, which the run's fresh `__main__` replaces.
import os
import sys

import resource

os.unlink(sys.argv[0])


def _read_run():
    chunks = []
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        # The sandbox discarded this prepared run without handing one over.
        raise SystemExit(0)
    # Fields, each as its decimal length, a newline and its bytes.
    fields = []
    start = 0
    while start < len(data):
        newline = data.index(b"\n", start)
        end = newline + 1 + int(data[start:newline])
        fields.append(data[newline + 1 : end])
        start = end
    return fields


_fields = _read_run()
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
_name = os.fsdecode(_fields[0])
_source = _fields[1]
_argc = int(_fields[3])
_args = [os.fsdecode(a) for a in _fields[4 : 4 + _argc]]
_env = _fields[4 + _argc :]

if _fields[2]:
    # Lowered only: the prepared ceilings are hard limits, which an unprivileged process cannot raise again.
    _address_space, _cpu, _processes, _files, _file_size = (int(v) for v in _fields[2].split())
    resource.setrlimit(resource.RLIMIT_AS, (_address_space, _address_space))
    resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu + 1))
    resource.setrlimit(resource.RLIMIT_NPROC, (_processes, _processes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (_files, _files))
    resource.setrlimit(resource.RLIMIT_FSIZE, (_file_size, _file_size))
del sys.modules["resource"]

os.environ.clear()
for _i in range(0, len(_env), 2):
    os.environ[os.fsdecode(_env[_i])] = os.fsdecode(_env[_i + 1])

_path = os.path.join(os.getcwd(), _name)
with open(_path, "wb") as _file:
    _file.write(_source)
sys.argv[:] = [_name, *_args]
sys.orig_argv[1:] = [_name, *_args]

_main = type(sys)("__main__")
_main.__annotations__ = {}
_main.__builtins__ = __builtins__
_main.__file__ = _path
_main.__cached__ = None
_main.__loader__ = type(__loader__)("__main__", _path)
sys.modules["__main__"] = _main
try:
    exec(compile(_source, _path, "exec", dont_inherit=True), _main.__dict__)
except SystemExit:
    raise
except BaseException as _error:
    # As the interpreter reports an uncaught exception, without this module's own frame.
    _trace = _error.__traceback__.tb_next
    sys.excepthook(type(_error), _error.with_traceback(_trace), _trace)
    if isinstance(_error, KeyboardInterrupt):
        import signal

        sys.stdout.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    raise SystemExit(1) from None
