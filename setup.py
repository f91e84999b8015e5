"""The compiled part of the package, optional: ``relay.media._fastloop``.

Everything else is in pyproject.toml. ``pip install -e .`` (or a wheel build) compiles the
forwarding fast path's per-datagram loop when a C compiler and Python's headers are
present; when they are not (``CC=false``, no ``python3-dev``), the build of this one
extension fails, setuptools says so, and the install goes on without it: the relay then
forwards with the Python fast path (relay/media/fastloop.py, docs/media.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "relay.media._fastloop",
            sources=["relay/media/_fastloop.c"],
            # A failed build leaves the package without the module instead of failing
            # the install (setuptools' build_ext catches the compiler's error).
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
        )
    ],
)
