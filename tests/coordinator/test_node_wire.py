"""The coordinator's GetFeatures requests: items encoded once per fan-out, the same message."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fedcredit.coordinator.fanout import FeatureRow, FetchBatch, FetchItem
from fedcredit.coordinator.nodes import encode_items
from fedcredit.v1 import common_pb2, feature_pb2

codes = st.text(alphabet="0123456789ABCDEFGHJKLMNPQRTUWXY", min_size=18, max_size=18)
tokens = st.text(min_size=0, max_size=300)


@given(st.lists(st.tuples(codes, tokens), max_size=20), st.lists(st.text(max_size=20), max_size=8))
def test_head_plus_items_is_the_whole_request(
    pairs: list[tuple[str, str]], feats: list[str]
) -> None:
    items = [FetchItem(c, t) for c, t in pairs]
    whole = feature_pb2.GetFeaturesRequest(
        items=[feature_pb2.EnterpriseRequest(enterprise=c, consent_token=t) for c, t in pairs],
        features=feats,
        purpose=common_pb2.PURPOSE_CREDIT_ASSESSMENT,
        on_behalf_of="bank-1",
        on_behalf_of_cert_sha256=b"\x07" * 32,
    )
    head = feature_pb2.GetFeaturesRequest(
        features=feats,
        purpose=common_pb2.PURPOSE_CREDIT_ASSESSMENT,
        on_behalf_of="bank-1",
        on_behalf_of_cert_sha256=b"\x07" * 32,
    ).SerializeToString()
    parsed = feature_pb2.GetFeaturesRequest.FromString(head + encode_items(items))
    assert parsed == whole
    assert parsed == feature_pb2.GetFeaturesRequest.FromString(
        head + encode_items(FetchBatch(items))
    )


def test_a_batch_is_encoded_once() -> None:
    batch = FetchBatch([FetchItem("91370000MA3C5X1234", "tok")])
    assert batch.wire is None
    first = encode_items(batch)
    assert batch.wire is first
    assert encode_items(batch) is first
    assert list(batch) == [FetchItem("91370000MA3C5X1234", "tok")]


def test_a_plain_list_is_not_cached() -> None:
    items = [FetchItem("91370000MA3C5X1234", "a")]
    assert encode_items(items) == encode_items([FetchItem("91370000MA3C5X1234", "a")])
    items[0] = FetchItem("91370000MA3C5X1234", "b")
    assert (
        feature_pb2.GetFeaturesRequest.FromString(encode_items(items)).items[0].consent_token == "b"
    )


def test_feature_row_reads_as_the_mapping_it_stands_for() -> None:
    import math

    names = ("a", "b", "c", "d")
    row = FeatureRow(
        names, {n: k for k, n in enumerate(names)}, [1.5, 2.0, math.nan, 4.0], [0, 1, 0, 0]
    )
    assert row == {"a": 1.5, "b": None, "c": None, "d": 4.0}  # flagged and NaN are missing
    assert list(row) == ["a", "b", "c", "d"] and len(row) == 4
    assert row.get("zz") is None and "zz" not in row
    got = row.floats()
    assert got[0] == 1.5 and got[3] == 4.0 and math.isnan(got[1]) and math.isnan(got[2])
