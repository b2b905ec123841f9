"""Our own decode loop (core/decode_loop.py) gives the ids of eager greedy `generate`: full
answers, max_new_tokens cut-offs at and around chunk ends, stop_after, cancel and timeout in the
middle of a chunk, several frame sizes and questions in a row; streamed text equals the final
text; the host waits on the device at most once per chunk (plus a constant per answer).

The loop's logic runs first uncompiled (fast: the same loop, the step left eager), then compiled
as `compile="on"` builds it in load(): 0 graph breaks (fullgraph) and 0 recompiles after load.
COMPILE TESTS: the `compiled_*` fixtures compile on the CPU (minutes on a loaded 2-core
machine: generous timeouts). No timing is asserted; bench/decode_paths.py measures speed.
"""

from __future__ import annotations

import time

import pytest
from test_decode_speed import INPUTS, answers, noise_image  # the inputs of both files
from test_decode_speed import engine_for as decode_speed_engine

from spatialthinker_ros.core import decode_loop, decoding
from spatialthinker_ros.core.engine import GenerationStopped, SpatialThinkerEngine
from spatialthinker_ros.core.scene import ParseStatus
from spatialthinker_ros.core.text import safe_text
from spatialthinker_ros.testing.forward_counter import HostSyncCounter
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, FITTED_MAX_PIXELS

COMPILE_TIMEOUT_S = 1800
NEW_TOKENS = 40
CHUNK = decode_loop.CHUNK_TOKENS


def engine_for(model_dir, **options) -> SpatialThinkerEngine:
    options.setdefault("max_new_tokens", NEW_TOKENS)
    return decode_speed_engine(model_dir, **options)


def with_eager_loop(engine: SpatialThinkerEngine, chunk: int = CHUNK) -> SpatialThinkerEngine:
    """The engine answering through the decode loop with its step left uncompiled."""
    backend = engine.backend
    backend.loop = decode_loop.DecodeLoop(backend.model, 1024, "cpu", chunk=chunk,
                                          compiled=False)  # fmt: skip
    return engine


def generate_ids(engine: SpatialThinkerEngine, image, question: str, n: int) -> list[int]:
    """The backend's generate with max_new_tokens=n (the engine passes its configured one)."""
    prepared = engine.prepare_image(image)
    prompt = engine.prompt_for(prepared, question, ())
    return list(engine.backend.generate(prepared.image, prompt, max_new_tokens=n).token_ids)


@pytest.fixture(scope="module")
def eager_sensitive(sensitive_model_dir):
    return engine_for(sensitive_model_dir, compile="off")


@pytest.fixture(scope="module")
def reference(eager_sensitive):
    ids = answers(eager_sensitive)
    assert eager_sensitive.describe()["last_decode"].startswith("generate (compile off")
    # The check means something only if the output depends on the input (and never ends).
    assert len(set(ids)) == len(ids) and all(len(i) == NEW_TOKENS for i in ids)
    return ids


@pytest.fixture(scope="module")
def eager_fitted(fitted_model_dir):
    return engine_for(fitted_model_dir, compile="off", max_pixels=FITTED_MAX_PIXELS,
                      max_new_tokens=1024)  # fmt: skip


# ------------------------------------------------------------------ the loop, step uncompiled


@pytest.mark.parametrize("chunk", [1, 3, CHUNK])
def test_the_loop_gives_generates_ids(sensitive_model_dir, reference, chunk):
    engine = with_eager_loop(engine_for(sensitive_model_dir, compile="off"), chunk)
    assert answers(engine) == reference
    assert engine.describe()["last_decode"] == "decode loop (compiled)"


def test_max_new_tokens_cut_offs_around_chunk_ends(sensitive_model_dir, reference):
    engine = with_eager_loop(engine_for(sensitive_model_dir, compile="off"))
    (size, question, _), want = INPUTS[1], reference[1]
    for n in (1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 3):
        assert generate_ids(engine, noise_image(*size, seed=1), question, n) == list(want[:n])


def test_the_end_token_ends_the_answer_mid_chunk(fitted_model_dir, eager_fitted):
    engine = with_eager_loop(engine_for(fitted_model_dir, compile="off",
                                        max_pixels=FITTED_MAX_PIXELS, max_new_tokens=1024))
    image = noise_image(641, 479)
    want = eager_fitted.answer(image, "Where is the cube?").generated_token_ids
    assert len(want) % CHUNK != 0  # the end token falls inside a chunk
    chunks: list[str] = []
    got = engine.answer(image, "Where is the cube?", on_text=chunks.append)
    assert got.generated_token_ids == want and got.raw == EXAMPLE_OUTPUT
    assert "".join(chunks) == EXAMPLE_OUTPUT


def test_stop_after_scene_graph_streams_and_stops_where_generate_does(fitted_model_dir,
                                                                      eager_fitted):
    engine = with_eager_loop(engine_for(fitted_model_dir, compile="off",
                                        max_pixels=FITTED_MAX_PIXELS, max_new_tokens=1024))
    image = noise_image(641, 479)
    want = eager_fitted.answer(image, "Where?", stop_after="scene_graph")
    chunks: list[str] = []
    graphs = []
    got = engine.answer(image, "Where?", stop_after="scene_graph", on_text=chunks.append,
                        on_scene_graph=lambda g, o: graphs.append(g))  # fmt: skip
    assert got.generated_token_ids == want.generated_token_ids
    assert got.raw == want.raw and got.raw.rstrip().endswith("</scene>")
    assert got.reasoning.status is ParseStatus.OK and graphs == [got.reasoning.scene_graph]
    assert "".join(chunks) == got.raw  # nothing streamed past the stop
    # The loop ran at most one chunk past the stop (the CPU queues no chunk ahead).
    assert int(engine.backend.loop.index) <= len(got.generated_token_ids) + CHUNK


@pytest.mark.parametrize("stop_at_piece", [1, 3])
def test_cancel_in_the_middle_of_a_chunk(sensitive_model_dir, stop_at_piece):
    engine = with_eager_loop(engine_for(sensitive_model_dir, compile="off"))
    seen: list[str] = []
    with pytest.raises(GenerationStopped):
        engine.answer(noise_image(336, 252), "Where?", on_text=seen.append,
                      should_stop=lambda: len(seen) >= stop_at_piece)  # fmt: skip
    written = int(engine.backend.loop.index)
    assert written < NEW_TOKENS and written % CHUNK == 0  # stopped at a chunk's check


def test_a_timeout_ends_the_answer_within_a_chunk(sensitive_model_dir):
    """`timeout_s` reaches the backend as should_stop (the engine's deadline): here a deadline
    that passes while the first chunk decodes."""
    engine = with_eager_loop(engine_for(sensitive_model_dir, compile="off"))
    deadline = time.monotonic()
    with pytest.raises(GenerationStopped):
        engine.answer(noise_image(336, 252), "Where?",
                      should_stop=lambda: time.monotonic() > deadline)  # fmt: skip
    assert int(engine.backend.loop.index) == CHUNK


# Host syncs of one answer besides its chunks: the frame-size check of encode, the prefill's.
PER_ANSWER_SYNCS = 8


def syncs(engine: SpatialThinkerEngine, watched, n: int) -> int:
    """Host syncs of one answer of n tokens (through the backend: max_new_tokens=n), the
    prompt token cache already warm for the frame size."""
    image = noise_image(640, 480)
    generate_ids(engine, image, "Where?", 1)
    with HostSyncCounter(watched) as counter:
        assert len(generate_ids(engine, image, "Where?", n)) == n
    return counter.count


def test_host_waits_once_per_chunk(sensitive_model_dir, eager_sensitive):
    """Host syncs outside the step (the uncompiled step runs outside the counter, as the
    compiled graph's ops do in the compiled test below)."""
    engine = with_eager_loop(engine_for(sensitive_model_dir, compile="off"))
    loop = engine.backend.loop
    loop.step = HostSyncCounter.device_work(loop.step)
    short, full = syncs(engine, [loop.ids], CHUNK), syncs(engine, [loop.ids], NEW_TOKENS)
    assert full - short == (NEW_TOKENS - CHUNK) // CHUNK  # one per further chunk
    assert short <= 1 + PER_ANSWER_SYNCS
    generate = syncs(eager_sensitive, [], NEW_TOKENS) - syncs(eager_sensitive, [], CHUNK)
    assert generate >= NEW_TOKENS - CHUNK  # the counter sees generate's per-token syncs


def test_generation_config_processors_send_the_answer_to_generate(sensitive_model_dir,
                                                                  reference):
    engine = with_eager_loop(engine_for(sensitive_model_dir, compile="off"))
    engine.backend.model.generation_config.repetition_penalty = 1.3
    try:
        ids = answers(engine)
    finally:
        engine.backend.model.generation_config.repetition_penalty = 1.0
    assert "repetition_penalty" in engine.describe()["last_decode"]
    assert ids != reference  # the penalty was applied (by generate)


def test_a_prompt_longer_than_the_static_cache_decodes_through_generate(fitted_model_dir):
    engine = engine_for(fitted_model_dir, max_pixels=FITTED_MAX_PIXELS, max_new_tokens=1024)
    backend = engine.backend
    backend.loop = decode_loop.DecodeLoop(backend.model, 64, "cpu", compiled=False)
    result = engine.answer(noise_image(641, 479), "Where is the cube?")
    assert result.raw == EXAMPLE_OUTPUT
    assert engine.describe()["last_decode"].startswith("generate (prompt of")
    assert not backend.loop.cache.layers[0].is_initialized  # never written


def test_end_tokens_and_processor_fields():
    from transformers import GenerationConfig

    assert decode_loop.end_tokens(GenerationConfig(eos_token_id=5)) == {5}
    assert decode_loop.end_tokens(GenerationConfig(eos_token_id=[5, 7])) == {5, 7}
    assert decode_loop.end_tokens(GenerationConfig()) == frozenset()
    assert decode_loop.generation_config_problem(GenerationConfig(eos_token_id=5)) is None
    assert "min_new_tokens" in decode_loop.generation_config_problem(
        GenerationConfig(min_new_tokens=3))


# ----------------------------------------------------------------- compiled in load() (slow)


def compile_counters() -> tuple[int, int, int]:
    from torch._dynamo.utils import counters

    return (counters["stats"]["unique_graphs"], sum(counters["recompiles"].values()),
            sum(counters["graph_break"].values()))  # fmt: skip


@pytest.fixture(scope="module")
def compiled_sensitive(sensitive_model_dir):
    """COMPILES (torch.compile on the CPU) while loading."""
    import torch._dynamo

    torch._dynamo.reset()
    engine = engine_for(sensitive_model_dir, compile="on")
    return engine, compile_counters()


@pytest.mark.timeout(COMPILE_TIMEOUT_S)
def test_compiled_loop_keeps_the_tokens_without_recompiling(compiled_sensitive, reference):
    engine, after_load = compiled_sensitive
    backend = engine.backend
    assert backend.loop is not None and backend.warmup_s > 0
    assert engine.describe()["compile"].startswith("on (decode loop")
    assert after_load[0] >= 1 and after_load[2] == 0  # compiled in load(), no graph break
    assert answers(engine) == reference
    assert engine.describe()["last_decode"] == "decode loop (compiled)"
    # Two frame sizes, three prompt lengths: all on the graph load() compiled.
    assert compile_counters() == after_load


@pytest.mark.timeout(COMPILE_TIMEOUT_S)
def test_compiled_loop_cuts_off_cancels_and_syncs_once_per_chunk(compiled_sensitive, reference):
    engine, after_load = compiled_sensitive
    (size, question, _), want = INPUTS[1], reference[1]
    for n in (1, CHUNK, CHUNK + 1):
        assert generate_ids(engine, noise_image(*size, seed=1), question, n) == list(want[:n])
    seen: list[str] = []
    with pytest.raises(GenerationStopped):
        engine.answer(noise_image(336, 252), "Where?", on_text=seen.append,
                      should_stop=lambda: len(seen) >= 2)  # fmt: skip
    loop = engine.backend.loop
    watched, step = [loop.ids], loop.step
    loop.step = HostSyncCounter.device_work(step)  # torch.compile runs under no dispatch mode
    try:
        short, full = syncs(engine, watched, CHUNK), syncs(engine, watched, NEW_TOKENS)
    finally:
        loop.step = step
    assert full - short == (NEW_TOKENS - CHUNK) // CHUNK and short <= 1 + PER_ANSWER_SYNCS
    assert compile_counters() == after_load


@pytest.mark.timeout(COMPILE_TIMEOUT_S)
def test_compiled_loop_on_the_fitted_model(fitted_model_dir, eager_fitted):
    """COMPILES. The fitted output in full and stopped after the scene graph, streamed."""
    engine = engine_for(fitted_model_dir, max_pixels=FITTED_MAX_PIXELS, max_new_tokens=1024,
                        compile="on")  # fmt: skip
    after_load = compile_counters()
    for seed, size in ((0, (641, 479)), (1, (336, 252))):
        image = noise_image(*size, seed=seed)
        chunks: list[str] = []
        result = engine.answer(image, "Where is the cube?", on_text=chunks.append)
        want = eager_fitted.answer(image, "Where is the cube?")
        assert result.generated_token_ids == want.generated_token_ids
        assert safe_text("".join(chunks)) == result.raw
    stopped = engine.answer(noise_image(641, 479), "Where?", stop_after="scene_graph")
    want = eager_fitted.answer(noise_image(641, 479), "Where?", stop_after="scene_graph")
    assert stopped.generated_token_ids == want.generated_token_ids
    assert stopped.reasoning.status is ParseStatus.OK
    assert compile_counters() == after_load


def test_compile_with_prompt_lookup_leaves_the_loop_off(fitted_model_dir):
    engine = engine_for(fitted_model_dir, max_pixels=FITTED_MAX_PIXELS, max_new_tokens=1024,
                        compile="on", prompt_lookup=10)  # fmt: skip
    assert engine.backend.loop is None
    assert engine.describe()["compile"] == "off (prompt lookup decodes through generate)"
    assert engine.answer(noise_image(641, 479), "Where is the cube?").raw == EXAMPLE_OUTPUT
    assert engine.describe()["last_decode"].startswith("generate (")
    assert decoding.static_cache_length(1000, 1024) == 2048
