"""Batched UDP I/O: recvmmsg(2) and sendmmsg(2) through ctypes.

One system call takes in up to BATCH datagrams and one sends every answer of the batch. Per
datagram, Python only slices bytes out of fixed buffers and writes two integers into preset
headers: no address tuple, no per-datagram syscall. Against the recvfrom/sendto loop it replaces,
this is the difference between costing more CPU per query than dnsmasq and less (bench/RESULTS.md).
The buffers and headers are allocated once per socket and reused.
"""

from __future__ import annotations

import ctypes as ct
import errno
import socket
from collections.abc import Callable

BATCH = 64
SLOT = 4096  # bytes per datagram slot; queries this long are dropped (cut), answers this long go out alone
MSG_DONTWAIT = 0x40
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class _IoVec(ct.Structure):
    _fields_ = [("base", ct.c_void_p), ("len", ct.c_size_t)]


class _MsgHdr(ct.Structure):
    _fields_ = [("name", ct.c_void_p), ("namelen", ct.c_uint32), ("iov", ct.c_void_p), ("iovlen", ct.c_size_t),
                ("control", ct.c_void_p), ("controllen", ct.c_size_t), ("flags", ct.c_int)]


class _MMsgHdr(ct.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ct.c_uint)]


# Hot fields, as indexes into memoryviews of the header arrays (a memoryview item costs far less
# than a ctypes attribute).
_U32 = ct.sizeof(ct.c_uint32)
_U64 = ct.sizeof(ct.c_uint64)
_MSG_STRIDE_U32 = ct.sizeof(_MMsgHdr) // _U32
_MSG_STRIDE_U64 = ct.sizeof(_MMsgHdr) // _U64
_LEN_U32 = _MMsgHdr.len.offset // _U32
_NAME_U64 = _MsgHdr.name.offset // _U64
_IOV_LEN_U64 = _IoVec.len.offset // _U64
_IOV_STRIDE_U64 = ct.sizeof(_IoVec) // _U64
_NAMELEN = {socket.AF_INET: 16, socket.AF_INET6: 28}  # sizeof(struct sockaddr_in{,6})

_libc = ct.PyDLL(None, use_errno=True)  # PyDLL keeps the GIL: both calls are non-blocking, so that is cheaper
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ct.c_int, ct.c_void_p, ct.c_uint, ct.c_int, ct.c_void_p]
_recvmmsg.restype = ct.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ct.c_int, ct.c_void_p, ct.c_uint, ct.c_int]
_sendmmsg.restype = ct.c_int


Left = tuple[int, bytes | None, bytes | None]  # see Batch.answer()
_NAME_STRIDE = 28  # bytes per address slot: sizeof(struct sockaddr_in6) fits either family


def _headers(n: int, names: int, namelen: int, bufs: int) -> tuple[ct.Array[_MMsgHdr], ct.Array[_IoVec]]:
    iovs = (_IoVec * n)()
    msgs = (_MMsgHdr * n)()
    for i in range(n):
        iovs[i].base = bufs + i * SLOT
        iovs[i].len = SLOT
        h = msgs[i].hdr
        h.name = names + i * _NAME_STRIDE
        h.namelen = namelen
        h.iov = ct.addressof(iovs[i])
        h.iovlen = 1
    return msgs, iovs


class Batch:
    """Receive and send buffers for one UDP socket.

    recv() fills slots 0..n-1; data(i) and client(i) read them. queue(i, reply) puts an answer to
    the sender of slot i into the send batch; flush() sends the queued answers in one call and
    returns the ones the kernel did not take (to be sent one by one, with their errors)."""

    def __init__(self, sock: socket.socket) -> None:
        self.fd = sock.fileno()
        self.family = sock.family
        namelen = _NAMELEN[sock.family]
        self._rbuf = ct.create_string_buffer(BATCH * SLOT)
        self._sbuf = ct.create_string_buffer(BATCH * SLOT)
        self._names = ct.create_string_buffer(BATCH * _NAME_STRIDE)
        self._rmsgs, self._riovs = _headers(BATCH, ct.addressof(self._names), namelen, ct.addressof(self._rbuf))
        # Send headers point at their own slot in _sbuf; msg_name is set per answer to the
        # receive slot of the query, so the kernel-written source address is reused as it is.
        self._smsgs, self._siovs = _headers(BATCH, ct.addressof(self._names), namelen, ct.addressof(self._sbuf))
        self._rmsgs_p = ct.addressof(self._rmsgs)
        self._smsgs_p = ct.addressof(self._smsgs)
        self._names_p = ct.addressof(self._names)
        self._rm = memoryview(self._rmsgs).cast("B").cast("I")
        self._sm = memoryview(self._smsgs).cast("B").cast("Q")
        self._siov = memoryview(self._siovs).cast("B").cast("Q")
        self._rb = memoryview(self._rbuf).cast("B")
        self._sb = memoryview(self._sbuf).cast("B")
        self._nb = memoryview(self._names).cast("B")
        self._n4 = memoryview(self._names).cast("B").cast("I")  # IPv4 address = u32 at offset 4
        self._queued: list[int] = []  # receive slot of each queued answer
        self._clients: dict[int | bytes, str] = {}  # source address -> text form, bounded
        # Per receive slot: (slot, msg_len index, buffer offset, address key index, msg_name pointer);
        # per send slot: (buffer offset, iov_len index, msg_name index). Arithmetic done once, here.
        key_at = [i * (_NAME_STRIDE // 4) + 1 if sock.family == socket.AF_INET else i * _NAME_STRIDE + 8
                  for i in range(BATCH)]  # IPv4: u32 index of sin_addr; IPv6: byte offset of sin6_addr
        self._slots = [(i, i * _MSG_STRIDE_U32 + _LEN_U32, i * SLOT, key_at[i], self._names_p + i * _NAME_STRIDE)
                       for i in range(BATCH)]
        self._sends = [(j * SLOT, j * _IOV_STRIDE_U64 + _IOV_LEN_U64, j * _MSG_STRIDE_U64 + _NAME_U64)
                       for j in range(BATCH)]

    def recv(self) -> int:
        """Datagrams now in slots 0..n-1: 0 when none are waiting. OSError on a real error. Answers
        queued and not flushed are dropped: the slots they would go back to are about to be reused."""
        self._queued.clear()
        n: int = _recvmmsg(self.fd, self._rmsgs_p, BATCH, MSG_DONTWAIT, None)
        if n < 0:
            e = ct.get_errno()
            if e in _AGAIN:
                return 0
            raise OSError(e, f"recvmmsg: {errno.errorcode.get(e, e)}")
        return n

    def answer(self, n: int, fast: Callable[[bytes, str, str], bytes | None]) -> list[Left]:
        """Answer slots 0..n-1 with fast(query, client, "udp") into the send batch. Returns what is
        left as (slot, query, answer): query None = did not fit its slot; answer None = fast() had
        none; else an answer too long for a slot, to send alone. The same as data() + client() +
        queue() per slot, written out in one loop over precomputed offsets: this is the per-query cost."""
        rm, rb, sb, siov, sm = self._rm, self._rb, self._sb, self._siov, self._sm
        clients, queued, sends = self._clients, self._queued, self._sends
        v4 = self.family == socket.AF_INET
        n4, nb = self._n4, self._nb
        left: list[Left] = []
        for i, len_at, off, key_at, name_p in self._slots[:n]:
            size = rm[len_at]
            if size >= SLOT:  # cut by the slot (or exactly one slot long): not a query we take
                left.append((i, None, None))
                continue
            data = bytes(rb[off:off + size])
            ip = clients.get(n4[key_at] if v4 else bytes(nb[key_at:key_at + 16]))
            if ip is None:
                ip = self.client(i)
            try:
                reply = fast(data, ip, "udp")
            except Exception:  # a bug must cost one query (the caller's slow path logs it), not the batch
                reply = None
            if reply is None:
                left.append((i, data, None))
                continue
            size = len(reply)
            if size >= SLOT:
                left.append((i, data, reply))
                continue
            off, iov_len_at, name_at = sends[len(queued)]
            sb[off:off + size] = reply
            siov[iov_len_at] = size
            sm[name_at] = name_p
            queued.append(i)
        return left

    def data(self, i: int) -> bytes | None:
        """The datagram in slot i; None if it did not fit its slot."""
        _, len_at, off, _, _ = self._slots[i]
        size = self._rm[len_at]
        return None if size >= SLOT else bytes(self._rb[off:off + size])

    def client(self, i: int) -> str:
        """The sender's address in slot i, as text (remembered per address: converting costs more)."""
        key_at = self._slots[i][3]
        key = self._n4[key_at] if self.family == socket.AF_INET else bytes(self._nb[key_at:key_at + 16])
        ip = self._clients.get(key)
        if ip is None:
            ip = self.address(i)[0]
            if len(self._clients) >= 65536:
                self._clients.clear()
            self._clients[key] = ip
        return ip

    def address(self, i: int) -> tuple[str, int]:
        """The sender's (address, port) in slot i, for sendto()."""
        raw = bytes(self._nb[i * _NAME_STRIDE:(i + 1) * _NAME_STRIDE])
        port = int.from_bytes(raw[2:4], "big")
        if self.family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port

    def queue(self, i: int, reply: bytes) -> bool:
        """Answer the sender of slot i in the next flush(); False if the answer is too long for a slot."""
        size = len(reply)
        if size >= SLOT:
            return False
        off, iov_len_at, name_at = self._sends[len(self._queued)]
        self._sb[off:off + size] = reply
        self._siov[iov_len_at] = size
        self._sm[name_at] = self._slots[i][4]
        self._queued.append(i)
        return True

    def flush(self) -> list[tuple[int, bytes]]:
        """Send what queue() collected; returns (slot, answer) of those the kernel did not take in the
        batch (send buffer full, or an error on one of them), for the caller to send one by one."""
        queued = self._queued
        if not queued:
            return []
        total = len(queued)
        sent = 0
        while sent < total:
            n: int = _sendmmsg(self.fd, self._smsgs_p + sent * ct.sizeof(_MMsgHdr), total - sent, MSG_DONTWAIT)
            if n <= 0:
                break
            sent += n
        self._queued = []
        if sent == total:
            return []
        left = []
        for j in range(sent, total):
            off, iov_len_at, _ = self._sends[j]
            left.append((queued[j], bytes(self._sb[off:off + self._siov[iov_len_at]])))
        return left
