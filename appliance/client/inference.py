"""The SDK's private-inference client side: sessions that keep the secret key in this process.

>>> session = client.open_inference_session("ens_...")            # doctest: +SKIP
>>> scores = session.predict_embeddings(embeddings)                 # doctest: +SKIP
>>> client.private_predict("ens_...", ["a text"]).labels            # doctest: +SKIP

:class:`InferenceSession` holds the :class:`~crypto.private_inference.client.PrivateClient` (secret
key); only evaluation keys and ciphertexts leave the process. :class:`PrivatePrediction` is
what :meth:`appliance.client.Client.private_predict` returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from appliance.capabilities.inference.service import MAX_BATCH_BYTES, MAX_BATCH_ITEMS

log = logging.getLogger(__name__)

PER_REQUEST = 16
"""Single-layout ciphertexts per batch request unless the caller says otherwise."""

if TYPE_CHECKING:  # pragma: no cover - typing only
    from appliance.client import Client
    from crypto.private_inference.client import PrivateClient, PrivateScores


@dataclass(frozen=True)
class PrivatePrediction:
    """Labels decrypted by the client: class names, indices and, by the ensemble's output
    mode, per-class win counts (``"scores"``) or one-hot values in [0, 1] (``"onehot"``; with
    ``"label"`` exactly 1 on the label and 0 elsewhere, up to the flooding noise)."""

    labels: list[str]
    indices: list[int]
    win_counts: npt.NDArray[np.float64] | None
    one_hot: npt.NDArray[np.float64] | None = None


class InferenceSession:
    """A client's open session: the :class:`PrivateClient` (secret key) stays in this process.

    Made by :meth:`appliance.client.Client.open_inference_session`; only the evaluation keys
    were uploaded. ``predict_embeddings`` encrypts ``(Q, K, d)`` embeddings, sends them and
    decrypts the replies. A session the server no longer knows (closed, swept, expired: 404 or
    410) is reopened once with the same evaluation keys and the request sent again. ``close``
    (or leaving a ``with`` block) deletes it and its keys on the server.
    """

    def __init__(self, *, sdk: Client, ensemble_id: str, spec: dict[str, Any],
                 private_client: PrivateClient, session: dict[str, Any],
                 ttl_seconds: int | None = None) -> None:
        self._sdk = sdk
        self.ensemble_id = ensemble_id
        self.spec = spec
        self.private_client = private_client
        self._ttl_seconds = ttl_seconds
        self._adopt(session)
        self.reopened = 0

    def _adopt(self, session: dict[str, Any]) -> None:
        self.id = str(session["id"])
        self.expires_at = str(session["expires_at"])
        self.keys_size = int(session["keys_size"])
        self.closed = False

    def __repr__(self) -> str:
        return f"InferenceSession(id={self.id!r}, ensemble_id={self.ensemble_id!r})"

    @property
    def expired(self) -> bool:
        """True when the session is closed or within 30 s of its expiry."""
        end = datetime.strptime(self.expires_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        return self.closed or end.timestamp() - 30.0 <= time.time()

    @property
    def layouts(self) -> tuple[str, ...]:
        """The request layouts the server serves for this ensemble (from its spec)."""
        listed = self.spec.get("layouts")
        if listed is not None:
            return tuple(str(x) for x in listed)
        return ("single",) if self.spec.get("wide_layout") is None else ("single", "wide")

    def reopen(self) -> None:
        """Upload the same evaluation keys again as a new session (no key generation)."""
        body = _open(self._sdk, self.ensemble_id, self.private_client, self._ttl_seconds)
        self._adopt(body)
        self.reopened += 1

    def _post(self, params: dict[str, str], content: bytes) -> bytes:
        from appliance.client import ApiError

        path = f"/v1/ensembles/{self.ensemble_id}/predict"
        headers = {"Content-Type": "application/octet-stream"}
        if self.closed:
            self.reopen()
        for attempt in (0, 1):
            try:
                return bytes(self._sdk.request("POST", path, params={"session": self.id, **params},
                                               content=content, headers=headers).content)
            except ApiError as exc:
                if attempt or exc.status not in (404, 410):
                    raise
                self.reopen()  # a 404 here means the ensemble itself is gone: raised by reopen
        raise AssertionError("unreachable")

    def predict_embeddings(self, embeddings: npt.ArrayLike, *, batch: bool = True,
                           per_request: int = PER_REQUEST, layout: str | None = None) -> PrivateScores:
        """Encrypt ``(Q, K, d)`` embeddings, evaluate them remotely and decrypt the labels.

        With ``batch`` ciphertexts travel ``per_request`` at a time in the framed batch form;
        otherwise one request per query. ``layout`` is ``"single"``, ``"wide"`` (slots index
        queries: one request per :attr:`PrivateClient.wide_capacity` queries) or ``None``:
        wide when ``batch`` and :meth:`PrivateClient.prefers_wide` say so. A layout the spec
        does not list is refused here, before anything is encrypted.
        """
        from appliance.client import ClientError
        from crypto.errors import CryptoError

        emb = np.asarray(embeddings, dtype=np.float64)
        spec_dim = (int(self.spec["members"]), int(self.spec["dim"]))
        if emb.ndim != 3 or emb.shape[1:] != spec_dim or not len(emb):
            raise ClientError(f"embeddings must be (queries, {spec_dim[0]}, {spec_dim[1]}), "
                              f"got {emb.shape}", hint="embed each text through every template "
                              "of the spec (appliance.client.inference.embed_texts)")
        chosen = self.choose_layout(len(emb), batch=batch, layout=layout)
        try:
            return self._predict(emb, batch=batch, per_request=per_request, layout=chosen)
        except CryptoError as exc:
            raise ClientError(f"private prediction failed: {exc}", hint=exc.hint) from exc

    def choose_layout(self, count: int, *, batch: bool = True, layout: str | None = None) -> str:
        """The layout :meth:`predict_embeddings` uses for ``count`` queries: ``layout`` if the
        spec lists it (else a :class:`~appliance.client.ClientError`), or with ``None`` wide
        when ``batch`` and :meth:`PrivateClient.prefers_wide` say so, else single."""
        from appliance.client import ClientError

        if layout not in (None, "single", "wide"):
            raise ClientError(f"layout {layout!r} is not 'single', 'wide' or None")
        if layout is not None and layout not in self.layouts:
            raise ClientError(f"ensemble {self.ensemble_id} is not served in the {layout} layout "
                              f"(the spec lists {list(self.layouts)})",
                              hint="leave layout=None and the SDK picks one the server accepts")
        if layout is not None:
            return layout
        wide = batch and "wide" in self.layouts and self.private_client.prefers_wide(count)
        return "wide" if wide else "single"

    def request_queries(self, layout: str, *, batch: bool = True,
                       per_request: int = PER_REQUEST) -> int:
        """Most queries one request of ``layout`` carries (a whole wide body, or ``per_request``
        ciphertexts of the single layout's batch form, or one query without ``batch``)."""
        pc = self.private_client
        if layout == "wide":
            return pc.wide_capacity
        if not batch:
            return 1
        return _per_request(per_request) * pc.batch_capacity

    def _predict(self, emb: npt.NDArray[np.float64], *, batch: bool, per_request: int,
                 layout: str) -> PrivateScores:
        from crypto.private_inference.client import PrivateScores

        pc = self.private_client
        if pc.output == "label":
            return self._predict_label(emb, batch=batch, per_request=per_request, layout=layout)
        if layout == "wide":
            cap = pc.wide_capacity
            parts = []
            for start in range(0, len(emb), cap):
                part = emb[start:start + cap]
                reply = self._post({"layout": "wide"}, pc.encrypt_wide_batch(part))
                parts.append(pc.decrypt_wide_batch(reply, count=len(part)))
            return PrivateScores.concat(parts)
        if not batch:
            return PrivateScores.concat([pc.decrypt_result(self._post({}, pc.encrypt(q)))
                                         for q in emb])
        cts = pc.encrypt_batch(emb)
        per_request = _per_request(per_request)
        out: list[bytes] = []
        for start in range(0, len(cts), per_request):
            out.extend(self._send(cts[start:start + per_request], batch=True))
        return pc.decrypt_batch(out, total=len(emb))

    def _send(self, bodies: list[bytes], *, batch: bool) -> list[bytes]:
        """One reply per single-layout body: in one framed batch request, or one request each."""
        from crypto.private_inference.wire import decode_blobs, encode_blobs

        if not batch:
            return [self._post({}, body) for body in bodies]
        reply = self._post({"batch": "true"}, encode_blobs(bodies))
        return decode_blobs(reply, max_items=len(bodies), max_bytes=MAX_BATCH_BYTES)

    def _predict_label(self, emb: npt.NDArray[np.float64], *, batch: bool, per_request: int,
                       layout: str) -> PrivateScores:
        """The label output's two rounds (:mod:`crypto.private_inference.label`), a request's
        worth of queries at a time (a wide body, or ``per_request`` single-layout ciphertexts):
        the queries, then the selections built from their round-1 replies. Where the server no
        longer holds the round-1 tickets (its evaluator was rebuilt between the rounds: 422),
        the queries are asked again once."""
        from appliance.client import ApiError
        from crypto.private_inference.client import PrivateScores

        pc = self.private_client
        wide = layout == "wide"
        size = self.request_queries(layout, batch=batch, per_request=per_request)
        parts: list[PrivateScores] = []
        for start in range(0, len(emb), size):
            part = emb[start:start + size]
            queries = [pc.encrypt_wide_batch(part)] if wide else [pc.encrypt(q) for q in part]
            for attempt in (0, 1):
                if wide:
                    reply = self._post({"layout": "wide"}, queries[0])
                    selections = [pc.label_wide_selection(reply, count=len(part))]
                else:
                    selections = [pc.label_selection(r) for r in self._send(queries, batch=batch)]
                try:
                    answers = ([self._post({"layout": "wide"}, selections[0])] if wide
                               else self._send(selections, batch=batch))
                    break
                except ApiError as exc:
                    if attempt or exc.status != 422:
                        raise
                    log.info("private inference: round-1 tickets lost (%s); asking again", exc.status)
            if wide:
                parts.append(pc.decrypt_wide_label(answers[0], count=len(part)))
            else:
                parts.extend(pc.decrypt_label(a) for a in answers)
        return PrivateScores.concat(parts)

    def close(self) -> None:
        """Delete the session (and its stored keys) on the server; a session the server
        already dropped (404, 410) counts as closed."""
        from appliance.client import ApiError

        if self.closed:
            return
        try:
            self._sdk.request("DELETE", f"/v1/inference/sessions/{self.id}")
        except ApiError as exc:
            if exc.status not in (404, 410):
                raise
        self.closed = True

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _per_request(count: int) -> int:
    """``count`` ciphertexts per batch request, within what the server accepts."""
    return max(1, min(int(count), MAX_BATCH_ITEMS))


def _open(sdk: Client, ensemble_id: str, private: PrivateClient,
          ttl_seconds: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {"ensemble_id": ensemble_id, "layout": private.layout_digest}
    if ttl_seconds is not None:
        params["ttl_seconds"] = ttl_seconds
    return dict(sdk._json("POST", "/v1/inference/sessions", params=params,
                          content=private.evaluation_keys(),
                          headers={"Content-Type": "application/octet-stream"}))


_ENCODER_LOCK = threading.Lock()
_ENCODERS: dict[str, Callable[[list[str]], npt.NDArray[np.float32]]] = {}


def default_text_encoder(precision: str = "fp32") -> Callable[[list[str]], npt.NDArray[np.float32]]:
    """all-MiniLM-L6-v2 from the offline package as ``encode(texts) -> (n, 384)``, loaded once
    per process.

    ONNX Runtime runs it (:class:`models.sentence_onnx.OnnxSentenceEncoder`: the graph is
    exported and checked against PyTorch on first use, then cached on this machine); where
    that is impossible the PyTorch encoder is used, with the same numbers. ``precision="int8"``
    runs the graph with 8-bit matrix weights (about twice as fast; embeddings at cosine ~0.99
    of the float ones, worst about 0.97): only for heads trained on that encoder's embeddings,
    and with no PyTorch fallback, since it would give other numbers.
    """
    with _ENCODER_LOCK:
        encode = _ENCODERS.get(precision)
        if encode is None:
            encode = _ENCODERS[precision] = _load_minilm(precision)
        return encode


def text_encoder(encoder: str) -> Callable[[list[str]], npt.NDArray[np.float32]]:
    """The encoder an ensemble's spec names (``spec["encoder"]``), loaded once per process:
    :data:`crypto.ensemble.MINILM_INT8` at 8 bits, any other all-MiniLM-L6-v2 name without a
    ``:`` qualifier in float.

    A model owner embeds the heads' training texts with the same function, so that its heads
    see what clients will send. Raises :class:`~appliance.client.ClientError` for other names
    (pass ``encode=`` to :meth:`~appliance.client.Client.private_predict` for those), and
    where the encoder cannot be loaded.
    """
    from appliance.client import ClientError
    from crypto.ensemble import MINILM_INT8
    from models.errors import ModelError

    name = encoder.lower()
    if name == MINILM_INT8:
        precision = "int8"
    elif "minilm-l6" in name and ":" not in name:
        precision = "fp32"
    else:  # a qualified MiniLM name is not taken for the float one: its heads expect others
        raise ClientError(f"the SDK has no built-in encoder {encoder!r}",
                          hint=f"the SDK embeds with {MINILM_INT8!r} or all-MiniLM-L6-v2; for "
                               "another encoder pass encode=, a function from a list of texts "
                               "to (n, d) embeddings from that encoder")
    try:
        return default_text_encoder(precision)
    except (ImportError, ModelError, OSError) as exc:
        hint = getattr(exc, "hint", None)
        if not hint and isinstance(exc, ImportError):
            hint = "install the SDK's dependencies (onnxruntime and onnx for the 8-bit encoder)"
        raise ClientError(f"the encoder {encoder!r} cannot be loaded here: {exc}",
                          hint=hint or "pass encode= to embed some other way") from exc


def _load_minilm(precision: str) -> Callable[[list[str]], npt.NDArray[np.float32]]:
    from models.errors import ModelError
    from models.hub import load_minilm, minilm_dir

    try:
        from models.sentence_onnx import OnnxSentenceEncoder

        fast = OnnxSentenceEncoder.from_transformers_dir(minilm_dir(), precision=precision)
        return lambda texts: fast.embed(list(texts))
    except (ImportError, ModelError, OSError) as exc:
        if precision != "fp32":
            raise
        log.info("ONNX encoder unavailable (%s); using PyTorch", type(exc).__name__)
    model = load_minilm()
    return lambda texts: model.embed(list(texts))


def embed_texts(spec: dict[str, Any], texts: Sequence[str],
                encode: Callable[[list[str]], Any]) -> npt.NDArray[np.float64]:
    """Client-side ``(Q, K, d)`` embeddings of ``texts`` through the spec's templates."""
    from crypto.private_inference.templates import embed_with_templates

    emb = embed_with_templates(list(texts), list(spec["templates"]), encode)
    if emb.shape[2] != int(spec["dim"]):
        from appliance.client import ClientError

        raise ClientError(f"the encoder gives {emb.shape[2]}-d embeddings; the ensemble "
                          f"expects {spec['dim']}-d ({spec['encoder']})",
                          hint="pass encode= the encoder the spec names")
    return emb
