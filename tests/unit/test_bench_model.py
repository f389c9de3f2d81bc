"""The end-to-end benchmark's own arithmetic: which messages a fake reply answers, and the
latencies the one-turn-at-a-time design allows (BENCHMARKS.md quotes both)."""

from __future__ import annotations

import pytest

from benchmarks.e2e_bench import Planned, Scenario, Sent, Stages, one_turn_at_a_time, turn_gaps
from benchmarks.fake_llm import completion, unanswered_markers


def _planned(conversation: int, *times: float) -> list[Planned]:
    return [Planned(at, f"c{conversation}-{k}", f"SM{conversation}{k}", "whatsapp:+1", conversation,
                    k, True, "") for k, at in enumerate(times)]  # fmt: skip


def test_a_reply_answers_the_messages_since_the_last_reply() -> None:
    messages = [
        {"role": "system", "content": "be kind [m:not-a-user]"},
        {"role": "user", "content": "hi [m:a]"},
        {"role": "assistant", "content": "hello [m:a]"},
        {"role": "user", "content": "order? [m:b]"},
        {"role": "user", "content": "no marker"},
        {"role": "user", "content": "where is it [m:c]"},
    ]
    assert unanswered_markers(messages) == ["[m:b]", "[m:c]"]
    answer = completion({"messages": messages, "model": "m"})
    assert answer["choices"][0]["message"]["content"].endswith("[m:b] [m:c]")


def test_a_first_turn_answers_every_message_so_far() -> None:
    messages = [{"role": "user", "content": "[m:x]"}, {"role": "user", "content": "[m:y]"}]
    assert unanswered_markers(messages) == ["[m:x]", "[m:y]"]


def test_messages_during_a_turn_wait_for_it_and_share_the_next() -> None:
    # model 1 s, hops free: the first turn runs 0-1 s; the messages at 0.3 s and 0.6 s wait for
    # it and are answered together at 2 s.
    latencies = one_turn_at_a_time(_planned(0, 0.0, 0.3, 0.6), model_s=1.0, hop_s=0.0, gap_s=0.0)
    assert latencies == pytest.approx([1000.0, 1700.0, 1400.0])


def test_hops_delay_each_turn_and_add_up_across_turns() -> None:
    # A message a second, model 1 s, hops of 10 ms, acks of 5 ms: a turn starts 20 ms after its
    # message or 5 ms after the previous model answered, whichever is later, so each following
    # turn starts 5 ms later than the one before relative to its message.
    latencies = one_turn_at_a_time(_planned(0, 0.0, 1.0, 2.0), model_s=1.0, hop_s=0.01,
                                   gap_s=0.005)  # fmt: skip
    assert latencies == pytest.approx([1040.0, 1045.0, 1050.0])


def test_conversations_do_not_wait_for_each_other() -> None:
    planned = _planned(0, 0.0) + _planned(1, 0.0)
    assert one_turn_at_a_time(planned, model_s=1.0, hop_s=0.0, gap_s=0.0) == pytest.approx(
        [1000.0, 1000.0]
    )


def test_a_turn_gap_counts_only_messages_that_waited_for_the_previous_turn() -> None:
    planned = _planned(0, 0.0, 1.0, 2.0) + _planned(1, 0.0, 1.0)
    scenario = Scenario(planned, Sent({}, 0.0, 0, 0.0, 0.0))
    stages = Stages(
        # Conversation 0: message 2 came (its event at 1,030) before turn 1's command (1,040);
        # its model call took 1,010 ms and its command is at 2,065, so the call started 15 ms
        # after turn 1's command. Message 3 came before turn 2's command too, but has no command
        # of its own: it counts for nothing. Conversation 1's second message came after the
        # first turn's command: it did not wait.
        event_in={"SM01": 1030, "SM02": 2030, "SM11": 1100},
        command_turn={"SM00": 1040, "SM01": 2065, "SM10": 1050, "SM11": 2120},
        model_ms={"SM01": 1010, "SM11": 1010},
    )
    assert turn_gaps(stages, scenario) == [15.0]
