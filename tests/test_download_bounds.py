"""KlingSession.download() stays on public media hosts and within bounds: internal addresses
(by spelling, by DNS answer, by redirect), the size cap, the stall bound, the destination
folder, leftovers of a killed process and the permission bits of a replaced file.

Every server here is on loopback. A guard on the event loop's ``sock_connect`` refuses (and
records) any attempt to connect elsewhere, so a test can prove that an internal address was
refused before a connection was tried, and no test can send traffic off this machine.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import pathlib
import socket
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

import kling_async
from kling_async import (
    DownloadError,
    DownloadPolicy,
    KlingSession,
    PollPolicy,
    RetryPolicy,
    Video,
)
from kling_async.testing import Fault, KlingEmulator

from .helpers import official

pytestmark = pytest.mark.anyio

PUBLIC_BASE = "https://api.kling.invalid"  # a session whose base URL is not on loopback
BODY = bytes(range(256)) * 64  # 16 KiB


class Guard:
    """What the loop was asked to connect to; anything but loopback is refused."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    @property
    def off_machine(self) -> list[str]:
        return [a for a in self.attempts if not ipaddress.ip_address(a).is_loopback]


@pytest.fixture
async def guard(monkeypatch: pytest.MonkeyPatch) -> Guard:
    loop = asyncio.get_running_loop()
    real = loop.sock_connect
    seen = Guard()

    async def sock_connect(sock: socket.socket, address: Any) -> None:
        seen.attempts.append(address[0].split("%")[0])
        if not ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "test guard: loopback only")
        await real(sock, address)

    monkeypatch.setattr(loop, "sock_connect", sock_connect)
    return seen


async def answering(monkeypatch: pytest.MonkeyPatch, table: dict[str, str]) -> list[str]:
    """Make the running loop's getaddrinfo answer ``table``'s names; returns the names asked."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    asked: list[str] = []

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name in table:
            asked.append(name)
            address = table[name]
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, int(port), 0, 0) if ":" in address else (address, int(port))
            return [(family, socket.SOCK_STREAM, 6, "", sockaddr)]
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return asked


class Server:
    """A loopback media host: ``handler`` answers every request; requests and ends counted."""

    def __init__(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.handler = handler
        self.requests: list[web.Request] = []
        self.ended = anyio.Event()  # the client went away mid-body
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        try:
            return await self.handler(request)
        except (ConnectionResetError, asyncio.CancelledError, aiohttp.ClientConnectionError):
            self.ended.set()
            raise

    def url(self, path: str = "/v.mp4", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


async def serve(server: Server) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    return runner


@pytest.fixture
async def media() -> AsyncIterator[Server]:
    """A loopback media host serving ``BODY`` (handler replaceable per test)."""

    async def whole(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BODY, content_type="video/mp4")

    server = Server(whole)
    runner = await serve(server)
    try:
        yield server
    finally:
        await runner.cleanup()


def public_session(**options: Any) -> KlingSession:
    """A session whose base URL is not on loopback; downloads send it nothing else."""
    options.setdefault("poll_policy", PollPolicy.instant())
    return KlingSession("key", base_url=PUBLIC_BASE, **options)


def files(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------ internal addresses


INTERNAL = [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "http://[::ffff:169.254.169.254]/latest/meta-data/",  # IPv4-mapped IPv6
    "http://2852039166/latest/meta-data/",  # 169.254.169.254 as one number
    "http://0xa9.0xfe.0xa9.0xfe/latest/meta-data/",  # ... in hex
    "http://10.0.0.1/v.mp4",
    "http://192.168.1.1/v.mp4",
    "http://172.16.0.1/v.mp4",
    "http://100.64.0.1/v.mp4",  # carrier-grade NAT: not global
    "http://0.0.0.0/v.mp4",
    "http://224.0.0.1/v.mp4",
    "http://240.0.0.1/v.mp4",
    "http://[fe80::1]/v.mp4",
    "http://[fc00::1]/v.mp4",
    "http://[::]/v.mp4",
    "http://[ff02::1]/v.mp4",
    "http://[64:ff9b::a9fe:a9fe]/v.mp4",  # NAT64 of 169.254.169.254
]


@pytest.mark.parametrize("url", INTERNAL)
async def test_an_internal_address_is_refused_before_connecting(
    emu: KlingEmulator, guard: Guard, tmp_path: pathlib.Path, url: str
) -> None:
    """Even an emulator session (loopback allowed) never reaches a private, link-local,
    multicast, reserved or unspecified address, however it is spelled."""
    async with official(emu) as session:
        with pytest.raises(DownloadError, match="internal address") as caught:
            await session.download(Video(id="v", url=url + "?X-Sig=secret"), tmp_path)
    assert url.split("/latest")[0].split("/v.mp4")[0] in caught.value.url
    assert "secret" not in str(caught.value) + caught.value.url
    assert ([], [], None) == (guard.attempts, files(tmp_path), caught.value.status)


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "2130706433", "0x7f.1"])
async def test_loopback_media_is_refused_when_the_session_is_not_on_loopback(
    media: Server, guard: Guard, tmp_path: pathlib.Path, host: str
) -> None:
    """Only a session whose own base URL is on loopback (the emulator) may fetch loopback
    media; `DownloadPolicy(allow_private=True)` allows it explicitly."""
    url = media.url(host=host)
    async with public_session() as session:
        with pytest.raises(DownloadError, match="internal address"):
            await session.download(Video(id="v", url=url), tmp_path)
        assert ([], 0) == (guard.attempts, len(media.requests))
        if host == "127.0.0.1":
            allowed = DownloadPolicy(allow_private=True)
            path = await session.download(Video(id="v", url=url), tmp_path, policy=allowed)
            assert BODY == path.read_bytes()


async def test_a_name_that_resolves_to_an_internal_address_is_refused(
    media: Server, guard: Guard, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The addresses a name resolves to are checked, by the resolver the connection uses:
    nothing is connected to, though the name itself looks public."""
    asked = await answering(
        monkeypatch,
        {"cdn.kling.test": "127.0.0.1", "metadata.kling.test": "169.254.169.254"},
    )
    async with public_session() as session:
        for name in ("metadata.kling.test", "cdn.kling.test"):
            with pytest.raises(DownloadError, match=f"{name} resolves to") as caught:
                await session.download(Video(id="v", url=media.url(host=name)), tmp_path)
            assert name in caught.value.url
        assert (["metadata.kling.test", "cdn.kling.test"], []) == (asked, guard.attempts)
        assert (0, []) == (len(media.requests), files(tmp_path))
        # The same resolver is the one connections use: allowed, it reaches the loopback host.
        allowed = DownloadPolicy(allow_private=True)
        video = Video(id="v", url=media.url(host="cdn.kling.test"))
        path = await session.download(video, tmp_path, policy=allowed)
    assert (BODY, ["127.0.0.1"]) == (path.read_bytes(), guard.attempts)


async def test_a_name_that_changes_its_answer_is_checked_at_each_connection(
    media: Server, guard: Guard, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answered loopback (allowed for a loopback session), then a
    link-local address; the second download is refused before connecting."""
    table = {"rebind.kling.test": "127.0.0.1"}
    await answering(monkeypatch, table)
    video = Video(id="v", url=media.url(host="rebind.kling.test"))
    async with KlingSession("key", base_url=media.url("/kling")) as session:
        path = await session.download(video, tmp_path)
        table["rebind.kling.test"] = "169.254.169.254"
        with pytest.raises(DownloadError, match=r"resolves to 169\.254\.169\.254"):
            await session.download(video, tmp_path)
    assert (BODY, ["127.0.0.1"], 1) == (path.read_bytes(), guard.attempts, len(media.requests))


async def test_a_redirect_to_an_internal_address_is_refused(
    emu: KlingEmulator, guard: Guard, tmp_path: pathlib.Path
) -> None:
    """Each redirect hop is checked like any URL before it is requested."""
    target = "http://169.254.169.254/latest/meta-data/iam"
    emu.inject(Fault.raw(302, b"", headers={"Location": target}), route="media")
    async with official(emu) as session:
        video = Video(id="v1", url=f"{emu.media_url}/media/v1.mp4")
        refused = r"redirected to http://169\.254\.169\.254"
        with pytest.raises(DownloadError, match=refused) as caught:
            await session.download(video, tmp_path)
    assert (302, 1, []) == (caught.value.status, emu.count("media"), files(tmp_path))
    assert [emu.media_url.split("//")[1].split(":")[0]] == guard.attempts


# ------------------------------------------------------------------------ size


async def test_a_declared_length_over_the_cap_is_refused_before_writing(
    media: Server, tmp_path: pathlib.Path
) -> None:
    """``Content-Length: 10**13`` under the default policy: refused at once, nothing written,
    not retried, and the connection is dropped."""

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(10**13)})
        await response.prepare(request)
        for _ in range(256):  # 4 MiB, then the connection ends: bounded, even unfixed
            await response.write(BODY)
        return response

    media.handler = huge
    async with KlingSession("key", base_url=media.url("/kling")) as session:  # default policies
        with pytest.raises(DownloadError, match=r"DownloadPolicy\.max_bytes") as caught:
            await session.download(Video(id="v", url=media.url()), tmp_path)
        with anyio.fail_after(5):
            await media.ended.wait()
    assert (200, 0, 1, []) == (
        caught.value.status,
        caught.value.received,
        len(media.requests),
        files(tmp_path),
    )


async def test_an_endless_body_stops_at_the_cap(media: Server, tmp_path: pathlib.Path) -> None:
    """A chunked body with no end is cut at ``max_bytes``; the partial file is removed."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        while True:
            await response.write(BODY)

    media.handler = endless
    policy = DownloadPolicy(max_bytes=1024 * 1024)
    async with KlingSession("key", base_url=media.url("/kling")) as session:
        with pytest.raises(DownloadError, match="over the cap of 1048576") as caught:
            await session.download(Video(id="v", url=media.url()), tmp_path, policy=policy)
        with anyio.fail_after(5):
            await media.ended.wait()
    assert caught.value.received <= 1024 * 1024
    assert (1, []) == (len(media.requests), files(tmp_path))


async def test_a_full_disk_is_a_download_error_and_leaves_no_file(
    emu: KlingEmulator, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing (the OS call fails): DownloadError chained to the OSError, and
    the partial file is gone."""
    if not pathlib.Path("/proc/self/fd").is_dir():  # noqa: ASYNC240  # pragma: no cover - Linux's fd table
        pytest.skip("needs /proc/self/fd to tell the temporary file's writes")
    real = os.write
    written = 0

    def write(fd: int, data: Any) -> int:
        nonlocal written
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            if written >= 64 * 1024:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written += len(data)
        return real(fd, data)

    async with KlingEmulator(media_bytes=4 * 1024 * 1024) as big, official(big) as session:
        monkeypatch.setattr(os, "write", write)
        with pytest.raises(DownloadError, match="No space left on device") as caught:
            await session.download(Video(id="v", url=f"{big.media_url}/media/v.mp4"), tmp_path)
        monkeypatch.undo()
    assert isinstance(caught.value.__cause__, OSError)
    assert errno.ENOSPC == caught.value.__cause__.errno
    assert [] == files(tmp_path)


# ------------------------------------------------------------------------ slowness


async def test_a_trickling_body_ends_at_the_stall_bound(
    media: Server, tmp_path: pathlib.Path
) -> None:
    """One byte at a time, each well within read_timeout: the download still ends, once the
    bytes of a window fall short, not retried, and the server sees the connection go."""
    sent = 0

    async def trickle(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
        await response.prepare(request)
        while True:
            await response.write(b"x")
            sent += 1
            await asyncio.sleep(0.02)

    media.handler = trickle
    policy = DownloadPolicy(stall_bytes=4096, stall_window=0.3)
    async with KlingSession("key", base_url=media.url("/kling"), read_timeout=2) as session:
        with pytest.raises(DownloadError, match=r"fewer than 4096 bytes in 0\.3 s") as caught:
            await session.download(Video(id="v", url=media.url()), tmp_path, policy=policy)
        with anyio.fail_after(5):
            await media.ended.wait()
    assert 0 < caught.value.received < 4096
    assert (1, []) == (len(media.requests), files(tmp_path))


def test_the_policy_is_checked() -> None:
    """Bounds are validated when the policy is made; defaults never hurt a slow real link."""
    policy = DownloadPolicy()
    assert (2 * 1024**3, 64 * 1024, 60.0, False) == (
        policy.max_bytes,
        policy.stall_bytes,
        policy.stall_window,
        policy.allow_private,
    )
    for bad in ({"max_bytes": 0}, {"stall_bytes": -1}, {"stall_window": 0}):
        with pytest.raises(ValueError):
            DownloadPolicy(**bad)
    with pytest.raises(TypeError):
        DownloadPolicy(allow_private=1)  # type: ignore[arg-type]


async def test_download_takes_only_a_download_policy(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    with pytest.raises(TypeError, match="DownloadPolicy"):
        await session.download(
            Video(id="v", url=f"{emu.media_url}/media/v.mp4"), tmp_path, policy=RetryPolicy()
        )  # type: ignore[arg-type]
    assert 0 == emu.count("media")


# ------------------------------------------------------------------------ destination


@pytest.mark.parametrize("spelling", ["newfolder", "new/nested/", "newfolder/"])
async def test_a_destination_folder_that_does_not_exist_is_created(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path, spelling: str
) -> None:
    """A path with no suffix, or ending with a separator, names a folder: it is created (with
    its parents) and the video goes inside, named after the video id."""
    video = Video(id="v1", url=f"{emu.media_url}/media/v1.mp4")
    dest = str(tmp_path / spelling) + ("/" if spelling.endswith("/") else "")
    path = await session.download(video, dest)
    assert (tmp_path / spelling.rstrip("/")) / "v1.mp4" == path
    assert emu.media_content("v1") == path.read_bytes()
    second = await session.download(Video(id="v2", url=f"{emu.media_url}/media/v2.mp4"), dest)
    assert (["v1.mp4", "v2.mp4"], path.parent) == (files(path.parent), second.parent)


async def test_a_file_where_a_folder_is_meant_is_not_overwritten(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """A file already named like the folder (no suffix) is an error, and stays as it was."""
    (tmp_path / "videos").write_bytes(b"an earlier video")
    with pytest.raises(FileExistsError, match="directory"):
        await session.download(
            Video(id="v1", url=f"{emu.media_url}/media/v1.mp4"), tmp_path / "videos"
        )
    assert (b"an earlier video", ["videos"]) == (
        (tmp_path / "videos").read_bytes(),
        files(tmp_path),
    )
    assert 0 == emu.count("media")


async def test_replacing_a_file_keeps_its_permission_bits(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    dest = tmp_path / "out.mp4"
    dest.write_bytes(b"old")
    dest.chmod(0o600)
    await session.download(Video(id="v1", url=f"{emu.media_url}/media/v1.mp4"), dest)
    assert (0o600, emu.media_content("v1")) == (
        stat.S_IMODE(dest.stat().st_mode),
        dest.read_bytes(),
    )


# ------------------------------------------------------------------------ leftovers

CHILD = """
import sys, time
import anyio
from kling_async import KlingSession, RetryPolicy, Video

async def main(media_url, dest):
    def progress(done, total):
        if done >= 1024 * 1024:
            print("mid-download", flush=True)
            time.sleep(60)  # killed here, with part of the video on disk

    async with KlingSession("key", base_url=media_url, retry_policy=RetryPolicy.instant()) as s:
        video = Video(id="crash", url=media_url + "/media/crash.mp4")
        await s.download(video, dest, progress=progress)

anyio.run(main, sys.argv[1], sys.argv[2], backend="asyncio")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX kill and flock")
async def test_the_next_download_removes_what_a_killed_one_left(tmp_path: pathlib.Path) -> None:
    """kill -9 mid-download leaves a hidden .part file; the next download of the same task to
    the same place removes it (a download in progress, which holds its lock, is left alone)."""
    root = pathlib.Path(kling_async.__file__).parent.parent
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    async with KlingEmulator(media_bytes=4 * 1024 * 1024) as emu:
        process = await anyio.open_process(
            [sys.executable, "-c", CHILD, emu.media_url, str(tmp_path)], env=env
        )
        async with process:
            try:
                assert process.stdout is not None
                with anyio.fail_after(30):
                    seen = b""
                    while b"mid-download" not in seen:
                        seen += await process.stdout.receive()
            finally:
                process.kill()
                await process.wait()
        (left,) = files(tmp_path)
        assert (".crash.mp4.", ".part") == (left[:11], left[-5:])
        import fcntl  # POSIX only

        busy = tmp_path / ".crash.mp4.0123456789ab.part"  # another download's, in progress
        with open(busy, "wb") as held:  # noqa: ASYNC230
            fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            async with official(emu) as session:
                path_done = await session.download(
                    Video(id="crash", url=f"{emu.media_url}/media/crash.mp4"), tmp_path
                )
            assert [busy.name, "crash.mp4"] == files(tmp_path)
    assert emu.media_content("crash") == path_done.read_bytes()


FULL_DISK_CHILD = """
import errno, os, resource, signal, sys
import anyio
from kling_async import DownloadError, KlingSession, RetryPolicy, Video

async def main(media_url, dest):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, resource.RLIM_INFINITY))
    async with KlingSession("key", base_url=media_url) as s:
        video = Video(id="full", url=media_url + "/media/full.mp4")
        try:
            await s.download(video, dest)
        except DownloadError as exc:
            cause = exc.__cause__
            print("DownloadError", getattr(cause, "errno", None), sorted(os.listdir(dest)))
        except OSError as exc:
            print("OSError", exc.errno, sorted(os.listdir(dest)))

anyio.run(main, sys.argv[1], sys.argv[2], backend="asyncio")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX RLIMIT_FSIZE")
async def test_a_file_size_limit_of_the_os_is_a_download_error(tmp_path: pathlib.Path) -> None:
    """The OS refuses a write (RLIMIT_FSIZE in a child process, as a full disk would): the
    download raises DownloadError chained to that OSError and leaves no file."""
    root = pathlib.Path(kling_async.__file__).parent.parent
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    async with KlingEmulator(media_bytes=4 * 1024 * 1024) as emu:
        result = await anyio.run_process(
            [sys.executable, "-c", FULL_DISK_CHILD, emu.base_url, str(tmp_path)], env=env
        )
    assert f"DownloadError {errno.EFBIG} []" == result.stdout.decode().strip()
