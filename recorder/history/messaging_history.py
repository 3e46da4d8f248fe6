"""LivePerson's Consumer Messaging History API (CSDS `msgHist`, the consumer's own JWT).

`content(conversation)` fetches a conversation's `messageEventRecords`, page by page
(offset/limit, following `_metadata.next` where given), and says whether what came back is
whole: `_metadata.count` against the distinct records received. A partial answer is fetched
again (up to `PARTIAL_ATTEMPTS` times) before it is reported partial.

Readings the reference leaves open (protocol.md 12a, UNCONFIRMED), handled both ways:
- the request: `GET …/content/search?conversationId=` (current docs) or, where that is
  refused (404/405), the older `POST …/content/search` with `{"dialogId": …}` per dialog;
- the auth header: `jwt <token>` as on the websocket first, then `Bearer <token>`; the form
  that worked is kept;
- records may lack `dialogId`, `conversationId` and (receipts, per the docs) `sequence`:
  recorder.history.compare matches those by content.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote

from recorder.eventlog.records import canonical_json
from recorder.history.rest import RestClient, RestError

CONTENT_ENDPOINT = "history_content"
METADATA_ENDPOINT = "history_metadata"
PAGE_LIMIT = 100  # LivePerson's maximum per page
PARTIAL_ATTEMPTS = 3
MAX_PAGES = 1000  # 100,000 records: past that, something loops
AUTH_SCHEMES = ("jwt", "Bearer")


@dataclasses.dataclass
class HistoryContent:
    records: list[dict[str, Any]]
    expected: int | None  # `_metadata.count`, where the answer gave one
    partial: bool
    requests: int
    served: bool = True  # False: this form of the request is refused here (405)


class TokenRefused(RestError):
    """The history refused the consumer's token in every form (401/403)."""


class MessagingHistory:
    def __init__(self, rest: RestClient, base_url: Callable[[], Awaitable[str]],
                 account: str) -> None:
        self._rest = rest
        self._base_url = base_url
        self._account = account
        self._scheme = AUTH_SCHEMES[0]
        self._post_form = False  # True once GET by conversationId was refused

    async def base_url(self) -> str:
        return await self._base_url()

    async def _path(self, tail: str) -> str:
        return (f"{await self._base_url()}/messaging_history/api/account/"
                f"{quote(self._account, safe='')}/conversations/{tail}")

    async def _call(self, method: str, url: str, token: str, endpoint: str,
                    body: Any = None) -> tuple[int, Any, int]:
        """(status, body, requests) trying the auth forms in turn on 401."""
        schemes = [self._scheme, *(s for s in AUTH_SCHEMES if s != self._scheme)]
        for requests, scheme in enumerate(schemes, start=1):
            reply = await self._rest.request(
                method, url, endpoint=endpoint, json_body=body,
                headers={"Authorization": f"{scheme} {token}", "Accept": "application/json"})
            if reply.status not in (401, 403):
                self._scheme = scheme
                return reply.status, reply.body, requests
        raise TokenRefused(endpoint, "the consumer's token was refused (401)", 401)

    async def content(self, token: str, conversation_id: str,
                      dialog_ids: Sequence[str]) -> HistoryContent:
        requests = 0
        result = HistoryContent([], None, True, 0)
        union: dict[bytes, dict[str, Any]] = {}
        for _ in range(PARTIAL_ATTEMPTS):
            result = await self._content_once(token, conversation_id, dialog_ids)
            requests += result.requests
            # What each attempt got is kept: partial pages lose different records each time.
            for record in result.records:
                union.setdefault(canonical_json(record), record)
            whole = result.expected is not None and len(union) >= result.expected
            if not result.partial or whole:
                result.partial = False
                break
        result.records = list(union.values())
        result.requests = requests
        return result

    async def _content_once(self, token: str, conversation_id: str,
                            dialog_ids: Sequence[str]) -> HistoryContent:
        refused = 0
        if not self._post_form:
            url = (await self._path("conversation/content/search")
                   + f"?conversationId={quote(conversation_id, safe='')}")
            fetched = await self._pages("GET", url, token, None)
            if fetched.served:
                return fetched
            refused = fetched.requests  # the GET that was refused counts too
            self._post_form = True
        whole = HistoryContent([], 0, False, refused)
        for dialog_id in dialog_ids or [conversation_id]:
            url = await self._path("conversation/content/search")
            part = await self._pages("POST", url, token, {"dialogId": dialog_id})
            if not part.served:
                raise RestError(CONTENT_ENDPOINT, "neither GET nor POST content search is served")
            for record in part.records:
                record.setdefault("dialogId", dialog_id)  # the request named it
            whole.records += part.records
            whole.requests += part.requests
            whole.partial = whole.partial or part.partial
            whole.expected = None if part.expected is None or whole.expected is None else (
                whole.expected + part.expected)
        return whole

    async def _pages(self, method: str, url: str, token: str, body: Any) -> HistoryContent:
        """Every page of one search; `served` False where the form is refused (405)."""
        records: dict[bytes, dict[str, Any]] = {}
        expected: int | None = None
        requests, offset, partial = 0, 0, False
        for _ in range(MAX_PAGES):
            sep = "&" if "?" in url else "?"
            page_url = f"{url}{sep}offset={offset}&limit={PAGE_LIMIT}&sort=start:asc"
            status, answer, sent = await self._call(method, page_url, token, CONTENT_ENDPOINT,
                                                    body)
            requests += sent
            if offset == 0 and status == 405:
                return HistoryContent([], None, False, requests, served=False)
            if offset == 0 and status == 404:
                return HistoryContent([], 0, False, requests)  # the history has none of it
            if status != 200 or not isinstance(answer, dict):
                raise RestError(CONTENT_ENDPOINT, f"answered {status}", status)
            page = answer.get("messageEventRecords")
            page = [r for r in page if isinstance(r, dict)] if isinstance(page, list) else []
            for record in page:
                records.setdefault(canonical_json(record), record)
            metadata = answer.get("_metadata")
            count = metadata.get("count") if isinstance(metadata, dict) else None
            if type(count) is int and count >= 0:
                expected = count
            offset += PAGE_LIMIT
            more = isinstance(metadata, dict) and isinstance(metadata.get("next"), dict)
            if not page or (not more and (expected is None or offset >= expected)):
                break
        else:
            partial = True
        if expected is not None and len(records) < expected:
            partial = True
        return HistoryContent(list(records.values()), expected, partial, requests)

    async def conversations(self, token: str, *, limit: int = PAGE_LIMIT,
                            offset: int = 0) -> tuple[list[dict[str, Any]], int | None, int]:
        """One page of the consumer's conversations' metadata: (records, count, requests)."""
        url = (await self._path("consumer/metadata/search")
               + f"?offset={offset}&limit={limit}&sort=start:desc")
        status, answer, requests = await self._call("POST", url, token, METADATA_ENDPOINT, {})
        if status != 200 or not isinstance(answer, dict):
            raise RestError(METADATA_ENDPOINT, f"answered {status}", status)
        found = answer.get("conversationHistoryMetadataRecords")
        metadata = answer.get("_metadata")
        count = metadata.get("count") if isinstance(metadata, dict) else None
        return ([r for r in found if isinstance(r, dict)] if isinstance(found, list) else [],
                count if type(count) is int else None, requests)
