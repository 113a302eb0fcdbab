"""Merging memwarden's flags into JAVA_TOOL_OPTIONS / NODE_OPTIONS (runtime_options.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memwarden.runtime_options import (
    flag_values,
    heap_limit,
    jvm_setting,
    merge_options,
    node_setting,
    tokens,
)

pytestmark = pytest.mark.unit

SettingOf = Callable[[str], str | None]


@pytest.mark.parametrize(
    ("existing", "ours", "override", "value"),
    [
        pytest.param(None, ["-Xmx1g"], False, "-Xmx1g", id="unset"),
        pytest.param("-Dfoo=1", ["-Xmx1g"], False, "-Dfoo=1 -Xmx1g", id="appends"),
        pytest.param("-Xmx2g -Dfoo=1", ["-Xmx1g"], False, "-Xmx2g -Dfoo=1", id="keeps-theirs"),
        pytest.param(
            "-XX:MaxRAMPercentage=50",
            ["-Xmx1g"],
            False,
            "-XX:MaxRAMPercentage=50",
            id="percentage-is-the-same-setting-as-xmx",
        ),
        pytest.param(
            "-Xmx2g -Dfoo=1", ["-Xmx1g"], True, "-Dfoo=1 -Xmx1g", id="override-replaces-theirs"
        ),
        pytest.param("-Dfoo=1 -Xmx1g", ["-Xmx1g"], False, "-Dfoo=1 -Xmx1g", id="already-merged"),
        pytest.param(
            '-Dname="a  b" -Xmx2g -Dx=1',
            ["-Xmx1g", "-XX:MaxMetaspaceSize=128m"],
            True,
            '-Dname="a  b" -Dx=1 -Xmx1g -XX:MaxMetaspaceSize=128m',
            id="quoted-value-kept-byte-for-byte",
        ),
    ],
)
def test_jvm_merge_matrix(
    existing: str | None, ours: list[str], override: bool, value: str
) -> None:
    assert merge_options(existing, ours, setting_of=jvm_setting, override=override).value == value


@pytest.mark.parametrize(
    ("existing", "override", "value"),
    [
        pytest.param(
            "--trace-warnings", False, "--trace-warnings --max-old-space-size=512", id="appends"
        ),
        pytest.param(
            "--max_old_space_size=300",
            False,
            "--max_old_space_size=300",
            id="underscores-are-the-same-flag",
        ),
        pytest.param(
            "--max-old-space-size 300 --inspect",
            True,
            "--inspect --max-old-space-size=512",
            id="value-as-next-token",
        ),
    ],
)
def test_node_merge_matrix(existing: str, override: bool, value: str) -> None:
    merged = merge_options(
        existing, ["--max-old-space-size=512"], setting_of=node_setting, override=override
    )
    assert merged.value == value


def test_merge_reports_what_it_kept_and_replaced() -> None:
    kept = merge_options("-Xmx2g", ["-Xmx1g"], setting_of=jvm_setting)
    assert (kept.added, kept.kept, kept.replaced) == ((), ("-Xmx2g",), ())
    over = merge_options("-Xmx2g", ["-Xmx1g"], setting_of=jvm_setting, override=True)
    assert (over.added, over.kept, over.replaced) == (("-Xmx1g",), (), ("-Xmx2g",))


def test_a_flag_memwarden_does_not_inject_is_refused() -> None:
    with pytest.raises(ValueError, match="-Dfoo"):
        merge_options(None, ["-Dfoo=1"], setting_of=jvm_setting)


# --------------------------------------------------------------------------- properties

JVM_OURS = st.lists(
    st.sampled_from(
        [
            "-Xmx1g",
            "-XX:MaxRAMPercentage=71.25",
            "-XX:MaxMetaspaceSize=128m",
            "-XX:MaxDirectMemorySize=64m",
        ]
    ),
    unique_by=jvm_setting,
)
JVM_TOKENS = st.sampled_from(
    [
        "-Xmx2g",
        "-XX:MaxHeapSize=3g",
        "-XX:MaxRAMPercentage=50",
        "-XX:MaxMetaspaceSize=256m",
        "-XX:MaxDirectMemorySize=1g",
        "-Dfile.encoding=UTF-8",
        "-Xss512k",
        "-XX:+UseG1GC",
        '-Dname="a b"',
        "-javaagent:/otel.jar",
    ]
)
NODE_OURS = st.lists(st.just("--max-old-space-size=512"), max_size=1)
NODE_TOKENS = st.sampled_from(
    [
        "--max-old-space-size=100",
        "--max_old_space_size=200",
        "--trace-warnings",
        "--require=./otel.js",
        "--enable-source-maps",
    ]
)
SEPARATORS = st.sampled_from([" ", "  ", "\t"])


@st.composite
def option_text(draw: st.DrawFn, pieces: st.SearchStrategy[str]) -> str:
    words = draw(st.lists(pieces, max_size=6))
    return "".join(word + draw(SEPARATORS) for word in words).strip()


CASES = [
    pytest.param(jvm_setting, JVM_TOKENS, JVM_OURS, id="jvm"),
    pytest.param(node_setting, NODE_TOKENS, NODE_OURS, id="node"),
]


def _settings_made(text: str, setting_of: SettingOf) -> list[str]:
    return [s for t in tokens(text) if (s := setting_of(t.text)) is not None]


@pytest.mark.parametrize(("setting_of", "pieces", "ours"), CASES)
@settings(max_examples=300, deadline=None)
@given(data=st.data(), override=st.booleans())
def test_merge_never_drops_the_users_flags_and_never_duplicates_ours(
    setting_of: SettingOf,
    pieces: st.SearchStrategy[str],
    ours: st.SearchStrategy[list[str]],
    data: st.DataObject,
    override: bool,
) -> None:
    existing = data.draw(option_text(pieces))
    flags = data.draw(ours)
    merged = merge_options(existing, flags, setting_of=setting_of, override=override)
    theirs = [t.text for t in tokens(existing)]
    result = [t.text for t in tokens(merged.value)]
    wanted = {setting_of(f) for f in flags}
    # Never drops: every token of theirs survives, unless override cut it for one of ours.
    for token in theirs:
        if override and setting_of(token) in wanted:
            continue
        assert token in result
    # Never duplicates: each of our flags is there at most once, and a setting we make is
    # made twice only where the container itself made it twice.
    for flag in flags:
        assert result.count(flag) <= 1
        setting = setting_of(flag)
        made = _settings_made(merged.value, setting_of).count(setting)
        before = _settings_made(existing, setting_of).count(setting)
        assert made == (1 if override or before == 0 else before)
        if override or before == 0:
            assert flag in result
    # Idempotent: merging again changes nothing.
    again = merge_options(merged.value, flags, setting_of=setting_of, override=override)
    assert again.value == merged.value


@given(text=option_text(JVM_TOKENS))
def test_flag_values_read_back_what_merge_wrote(text: str) -> None:
    merged = merge_options(text, ["-Xmx1g"], setting_of=jvm_setting, override=True)
    assert flag_values(merged.value, setting_of=jvm_setting)["heap"] == "-Xmx1g"


@pytest.mark.parametrize(
    ("flag", "size"),
    [
        ("-Xmx1g", 2**30),
        ("-Xmx768m", 768 * 2**20),
        ("-XX:MaxHeapSize=512K", 512 * 2**10),
        ("-Xmx1000", 1000),
        ("--max-old-space-size=512", 512 * 2**20),
        ("-XX:MaxRAMPercentage=70", None),
        ("-Xmxlots", None),
    ],
)
def test_heap_limit(flag: str, size: int | None) -> None:
    assert heap_limit(flag) == size
