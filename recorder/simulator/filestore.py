"""The simulator's file storage: Swift-style signed temp URLs for uploads and downloads.

`SimServer` serves the files; requests (GenerateURLForUploadFile/DownloadFile) sign the paths.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import time

from recorder.simulator.model import Json, new_uuid


class FileStore:
    """Swift-style temp URLs: `relativePath` plus `temp_url_sig`/`temp_url_expires` (§10)."""

    def __init__(self, account: str, rng: random.Random) -> None:
        self.account = account
        self._rng = rng
        self._secret = secrets.token_bytes(16)
        self.data: dict[str, bytes] = {}

    def new_path(self, consumer: str, file_type: str) -> str:
        now = time.time()
        millis = int(now * 1000) % 1000
        stamp = time.strftime("%d-%m-%Y_%H-%M-%S", time.gmtime(now)) + f"-{millis:03d}"
        name = f"{consumer}_uuid_{new_uuid(self._rng)}_{stamp}.{file_type}"
        return f"/v1/AUTH_async-images/{self.account}/{name}"

    def signed(self, path: str, ttl_s: int = 60) -> Json:
        expires = str(int(time.time()) + ttl_s)
        params = {"temp_url_sig": self._sign(path, expires), "temp_url_expires": expires}
        return {"relativePath": path, "queryParams": params}

    def check(self, path: str, sig: str, expires: str) -> bool:
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(sig, self._sign(path, expires))

    def _sign(self, path: str, expires: str) -> str:
        return hmac.new(self._secret, f"{path}\n{expires}".encode(), hashlib.sha1).hexdigest()
