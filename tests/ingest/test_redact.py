"""No SAS token in a message: `redact` on the forms Planetary Computer hrefs take."""

from __future__ import annotations

import pytest

from ingest.raster import redact

SIG = "AbCdEf0123%2Bghij%3D"
TOKEN = (
    "st=2026-12-03T09%3A12%3A41Z&se=2026-12-04T09%3A57%3A41Z&sp=rl&sv=2024-05-04&sr=c"
    "&skoid=9c8ff44a-6a2c-4dfb-b298-1c9212f64d9a&sktid=72f988bf-86f1-41af-91ab-2d7cd011db47"
    f"&skt=2026-12-03T17%3A49%3A07Z&ske=2026-12-10T17%3A49%3A07Z&sks=b&skv=2024-05-04&sig={SIG}"
)
BLOB = (
    "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/06/V/VN/2021/06/10/"
    "S2B_MSIL2A_20210610T214529_N0300_R073_T06VVN_20210611T005023.SAFE/GRANULE/"
    "L2A_T06VVN_A022316_20210610T214530/IMG_DATA/R10m/T06VVN_20210610T214529_B04_10m.tif"
)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"{BLOB}?{TOKEN}", f"{BLOB}?<redacted>"),
        (f"/vsicurl/{BLOB}?{TOKEN}", f"/vsicurl/{BLOB}?<redacted>"),
        (f"HTTP response code: 403 - {BLOB}?{TOKEN}: Forbidden",
         f"HTTP response code: 403 - {BLOB}?<redacted>: Forbidden"),
        (f"'{BLOB}?{TOKEN}', retrying", f"'{BLOB}?<redacted>', retrying"),
        (f'{{"href": "{BLOB}?{TOKEN}"}}', f'{{"href": "{BLOB}?<redacted>"}}'),
        (f"{BLOB}?st=2026-12-03 &sig={SIG} failed", f"{BLOB}?<redacted> &sig=<redacted> failed"),
        (f"sig={SIG}", "sig=<redacted>"),
    ],
)  # fmt: skip
def test_tokens_are_removed_and_the_message_kept(text: str, kept: str) -> None:
    out = redact(text)
    assert out == kept
    assert SIG not in out and "skoid=9c8f" not in out
    assert redact(out) == out, "redacting twice changes nothing"


def test_percent_encoded_signed_urls() -> None:
    encoded = (BLOB + "?" + TOKEN).replace("%", "%25").replace(":", "%3A").replace("/", "%2F")
    encoded = encoded.replace("?", "%3F").replace("&", "%26").replace("=", "%3D")
    out = redact(f"proxy url={encoded} -> 403")
    assert "ghij" not in out and "skoid" not in out.split("%3F")[-1]
    assert out.endswith(" -> 403") and "T06VVN_20210610T214529_B04_10m.tif%3F<redacted>" in out


def test_plain_text_is_left_alone() -> None:
    text = "first=3 st: sig, test.tif is missing: see https://example.org/a.tif"
    assert redact(text) == text
