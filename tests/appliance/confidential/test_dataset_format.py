"""The encrypted dataset format (EDS1) on the one framing reader: round trip, and truncated,
garbled or random input is always a ConfidentialError (never struct.error or a big allocation)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.confidential import ConfidentialError, EncryptedDataset

#: Written by the earlier hand-rolled encoder: the format is unchanged byte for byte.
EDS1_ROWS = bytes.fromhex(
    "4544533100000000417b2262617463685f73697a6573223a205b322c20315d2c202264696d223a20342c20226c65"
    "6e67746873223a205b322c20335d2c20226c6162656c73223a20337d63316332324c424c"
)
EDS1_COEFF = bytes.fromhex(
    "4544533100000000697b2262617463685f73697a6573223a205b325d2c202264696d223a20342c20226c656e6774"
    "6873223a205b325d2c20226c6162656c73223a20312c20226c61796f7574223a2022636f656666222c202267656f"
    "6d65747279223a205b342c20322c20332c2031305d7d63314c"
)

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

datasets = st.builds(
    lambda features, dim, labels, coeff: EncryptedDataset(
        features=features,
        batch_sizes=[1 + len(f) % 7 for f in features],
        dim=dim,
        labels_blob=labels,
        **({"layout": "coeff", "geometry": (4, 2, 3, 10)} if coeff else {}),
    ),
    st.lists(st.binary(max_size=30), min_size=1, max_size=4),
    st.integers(min_value=1, max_value=4096),
    st.binary(max_size=30),
    st.booleans(),
)


@FUZZ
@given(dataset=datasets, cut=st.integers(min_value=0), junk=st.binary(min_size=1, max_size=4))
def test_datasets_round_trip_and_damage_is_a_confidential_error(dataset: EncryptedDataset, cut: int,
                                                                junk: bytes) -> None:
    blob = dataset.to_bytes()
    assert blob[:5] == b"EDS1\x00"
    assert EncryptedDataset.from_bytes(blob) == dataset
    with pytest.raises(ConfidentialError):
        EncryptedDataset.from_bytes(blob[: len(blob) - 1 - cut % (len(blob) - 5)])
    with pytest.raises(ConfidentialError):
        EncryptedDataset.from_bytes(blob + junk)
    with pytest.raises(ConfidentialError):
        EncryptedDataset.from_bytes(blob, max_bytes=len(blob) - 1)


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_datasets_are_a_confidential_error(data: bytes) -> None:
    with pytest.raises(ConfidentialError):
        EncryptedDataset.from_bytes(b"EDS1\x00" + data)


@pytest.mark.parametrize(
    "head",
    [
        b'{"lengths": [-4, 8], "batch_sizes": [1, 1], "dim": 2, "labels": 0}',
        b'{"lengths": [4], "batch_sizes": [1], "dim": 2, "labels": -4}',
        b'{"lengths": [1e400], "batch_sizes": [1], "dim": 2, "labels": 0}',
        b'{"lengths": [4], "batch_sizes": [1], "dim": 2}',
        b"[1, 2]",
    ],
)
def test_forged_dataset_headers_are_refused(head: bytes) -> None:
    with pytest.raises(ConfidentialError):
        EncryptedDataset.from_bytes(b"EDS1\x00" + len(head).to_bytes(4, "big") + head + bytes(4))
    with pytest.raises(ConfidentialError):
        EncryptedDataset.from_bytes(b"EDS1\x00\xff\xff\xff\xff" + head)


def test_encrypted_dataset_bytes() -> None:
    rows = EncryptedDataset(features=[b"c1", b"c22"], batch_sizes=[2, 1], dim=4, labels_blob=b"LBL")
    coeff = EncryptedDataset(features=[b"c1"], batch_sizes=[2], dim=4, labels_blob=b"L", layout="coeff",
                             geometry=(4, 2, 3, 10))
    assert rows.to_bytes() == EDS1_ROWS and EncryptedDataset.from_bytes(EDS1_ROWS) == rows
    assert coeff.to_bytes() == EDS1_COEFF and EncryptedDataset.from_bytes(EDS1_COEFF) == coeff
