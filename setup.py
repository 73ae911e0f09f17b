"""The one compiled part of Kiln: kiln_server._payload_chunks (payload logging's record store, in C).

Everything else is in pyproject.toml. The extension is optional: the operator's and trainer's images have no
compiler and never log payloads; the server's image builds it in a build stage and checks that it imports
(server-image/Dockerfile), and kiln_server.payload_log refuses to start logging without it."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("kiln_server._payload_chunks", ["server-image/kiln_server/_payload_chunks.c"],
                             extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
                             optional=True)])
