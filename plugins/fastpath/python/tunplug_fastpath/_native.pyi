"""Type stubs of the Rust extension module (``plugins/fastpath/src``)."""

from collections.abc import Sequence

__version__: str

class DecryptionFailed(ValueError): ...
class OffloadError(ValueError): ...

class TransportKey:
    """ChaCha20-Poly1305 of one session direction."""

    def __init__(self, key: bytes) -> None: ...
    def seal(
        self, counter: int, plaintext: bytes | bytearray | memoryview, aad: bytes | None = None
    ) -> bytes: ...
    def open(
        self, counter: int, ciphertext: bytes | bytearray | memoryview, aad: bytes | None = None
    ) -> bytes: ...
    def seal_transport(
        self,
        receiver: int,
        first_counter: int,
        packets: list[bytes | bytearray | memoryview],
        mtu: int,
    ) -> tuple[bytes, list[int]]: ...
    def open_many(
        self, counters: list[int], ciphertexts: list[bytes | bytearray | memoryview]
    ) -> list[bytes | None]: ...

def split(frame: bytes | bytearray | memoryview) -> list[bytes]: ...
def coalesce(
    packets: Sequence[bytes | bytearray | memoryview], verify_checksums: bool = False
) -> list[tuple[bytes, int, int]]: ...
