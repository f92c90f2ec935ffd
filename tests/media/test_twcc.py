"""Transport-cc feedback: reading it, and the delay-based over-use detector fed by it."""

from __future__ import annotations

import struct

import pytest

from media.twcc import TransportFeedbackAdapter, parse_feedback


def feedback(base: int, arrivals: list[float | None], reference: float = 0.0) -> bytes:
    """Build transport-cc feedback as libwebrtc does (status vectors of 2-bit symbols)."""
    symbols, deltas = [], b""
    previous = round(reference / 0.064) * 0.064  # what the header can say
    for arrival in arrivals:
        if arrival is None:
            symbols.append(0)
            continue
        ticks = round((arrival - previous) / 0.00025)
        previous += ticks * 0.00025
        if 0 <= ticks <= 255:
            symbols.append(1)
            deltas += bytes([ticks])
        else:
            symbols.append(2)
            deltas += struct.pack("!h", ticks)
    chunks = b""
    for i in range(0, len(symbols), 7):
        group = symbols[i:i + 7] + [0] * (7 - len(symbols[i:i + 7]))
        value = 0xC000
        for j, symbol in enumerate(group):
            value |= symbol << (12 - 2 * j)
        chunks += struct.pack("!H", value)
    header = struct.pack("!HH", base, len(arrivals)) + (round(reference / 0.064) << 8 | 7).to_bytes(4, "big")
    return header + chunks + deltas


def test_feedback_gives_each_packet_its_arrival_or_loss() -> None:
    arrivals = [1.0, 1.002, None, 1.0605, 0.9, 1.2]  # a reordered one and a large delta
    got = parse_feedback(feedback(65533, arrivals, reference=0.96))
    assert [seq for seq, _ in got] == [65533, 65534, 65535, 0, 1, 2]
    for (_, arrival), expected in zip(got, arrivals, strict=True):
        assert (arrival is None) == (expected is None)
        if expected is not None:
            assert arrival == pytest.approx(expected, abs=0.0003)


def test_a_run_length_chunk_and_a_one_bit_vector() -> None:
    # 3 packets received with small deltas (run length), then 14 one-bit symbols: 1 then lost.
    fci = struct.pack("!HHiHH", 10, 17, 7, 0x2000 | 3, 0x8000 | (1 << 13)) + bytes([4, 4, 4, 4])
    got = parse_feedback(fci)
    assert len(got) == 17
    assert [a is not None for _, a in got[:4]] == [True] * 4 and all(a is None for _, a in got[4:])
    assert got[3][1] == pytest.approx(4 * 4 * 0.00025)


def test_truncated_feedback_is_refused() -> None:
    whole = feedback(0, [1.0, 1.01, 1.02])
    for cut in (4, 9, len(whole) - 1):
        with pytest.raises(ValueError):
            parse_feedback(whole[:cut])


def run(adapter: TransportFeedbackAdapter, seconds: float, send_gap: float, arrive_gap: float,
        start: tuple[float, float, int]) -> tuple[float, float, int, bool]:
    """Send a packet every ``send_gap`` that arrives every ``arrive_gap``; feed it back."""
    sent, arrived, seq = start
    overuse = False
    arrivals: list[float | None] = []
    base = seq
    while sent - start[0] < seconds:
        adapter.on_sent(seq & 0xFFFF, sent, 1200)
        arrivals.append(arrived)
        sent += send_gap
        arrived += arrive_gap
        seq += 1
        if len(arrivals) == 20:
            overuse = adapter.on_feedback(feedback(base & 0xFFFF, arrivals, reference=arrivals[0] - 0.01)) or overuse
            arrivals, base = [], seq
    return sent, arrived, seq, overuse


def test_a_queue_building_up_is_over_use_and_the_acked_rate_is_what_arrived() -> None:
    adapter = TransportFeedbackAdapter()
    # 1200-byte packets every 10 ms that arrive as sent: 960 kbit/s, no over-use.
    state = run(adapter, 3.0, 0.010, 0.010, (0.0, 5.0, 0))
    assert not state[3]
    assert adapter.acked_bps() == pytest.approx(960_000, rel=0.05)
    assert adapter.delivery_ratio() == pytest.approx(1.0, rel=0.02)
    # The link now carries 80 % of that: each packet waits 2.5 ms longer than the one before.
    state = run(adapter, 1.0, 0.010, 0.0125, state[:3])
    assert state[3]
    assert adapter.acked_bps() < 900_000
    assert adapter.delivery_ratio() == pytest.approx(0.8, rel=0.05)
