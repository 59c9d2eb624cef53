"""Test doubles of Serve's deployment handles, for the router's unit tests (never in deployments/).

`FakeHandle(generate=fn, ...)`: `handle.generate.remote(request)` awaits `fn(request)`, as a Serve
DeploymentResponse would; `handle.options(stream=True).stream.remote(request)` iterates the async
generator `stream(request)` and records `cancel()`.
"""

from __future__ import annotations


class FakeStream:
    def __init__(self, gen):
        self.gen, self.cancelled = gen, False

    def __anext__(self):
        return self.gen.__anext__()

    def cancel(self) -> None:
        self.cancelled = True


class _Method:
    def __init__(self, handle: FakeHandle, name: str):
        self.handle, self.name = handle, name

    def remote(self, *args):
        self.handle.calls.append((self.name, args))
        fn = self.handle.methods[self.name]
        if self.handle.streaming:
            stream = FakeStream(fn(*args))
            self.handle.streams.append(stream)
            return stream
        return fn(*args)


class FakeHandle:
    def __init__(self, **methods):
        self.methods = methods
        self.calls: list[tuple[str, tuple]] = []
        self.streams: list[FakeStream] = []
        self.streaming = False

    def options(self, stream: bool = False) -> FakeHandle:
        view = FakeHandle.__new__(FakeHandle)
        view.__dict__ = {**self.__dict__, "streaming": stream}
        return view

    def __getattr__(self, name: str) -> _Method:
        if name not in self.__dict__.get("methods", {}):
            raise AttributeError(name)
        return _Method(self, name)
