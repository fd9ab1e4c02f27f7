"""The playground page of `tinylm serve` in a real headless Chromium (Selenium), against the real
command line: `tinylm serve --port 0` in a subprocess, a model file with a metrics file beside it.
Type a prompt, generate, watch the text stream in, stop it; switch to chat and get answers; the
card and the training curve are shown. A screenshot is saved in the test's tmp folder (and in
$TINYLM_ARTIFACTS when set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cli_env, make_model, make_text
from tinylm.model.files import save_model
from tinylm.tokenizers import CharTokenizer

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
                       reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {DRIVER}); apt-get install chromium chromium-driver"),
]
selenium = pytest.importorskip("selenium", reason="needs selenium (the dev extra)")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900"]


def never_ending_model(tok):
    """A model whose next token is drawn from one fixed distribution that excludes EOS: the
    final norm outputs a constant vector c, and EOS's output row makes its logit -100. Its text
    is random characters that never end, so streaming and the stop button can be watched."""
    model = make_model(seed=3, vocab_size=tok.vocab_size, n_layer=1, tie_weights=False)
    with torch.no_grad():
        c = torch.randn(model.cfg.n_embd)
        model.ln_f.weight.zero_()
        model.ln_f.bias.copy_(c)
        model.lm_head.weight[tok.eos_id] = -100 * c / c.dot(c)
    return model


@pytest.fixture
def server(tmp_path):
    tok = CharTokenizer.train(make_text(3000, seed=4))
    path = tmp_path / "page.model"
    save_model(path, never_ending_model(tok), tok, {"steps": 40, "dataset": "corpus.txt", "val_loss": 3.5})
    rows = [{"kind": "train", "step": s, "tokens": 64 * s, "time": s / 10, "train_loss": 4 - s / 20, "lr": 1e-3,
             "grad_norm": 1.0, "tokens_per_s": 640.0} for s in range(1, 41)]
    rows += [{"kind": "eval", "step": s, "tokens": 64 * s, "time": s / 10, "val_loss": 4.1 - s / 25, "val_ppl": 50.0}
             for s in (10, 20, 30, 40)]
    (tmp_path / "page.metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    proc = subprocess.Popen([sys.executable, "-m", "tinylm", "serve", "-m", str(path), "--port", "0", "--slots", "2",
                             "--max-tokens", "4000"], cwd=tmp_path, env=cli_env(tmp_path), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert m, f"no address in {line!r}"
        yield f"http://127.0.0.1:{m.group(1)}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        opts.add_argument(f)
    try:
        driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    except Exception as e:  # noqa: BLE001 - a browser that cannot start here is a skip, with the reason
        pytest.skip(f"headless chromium did not start: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    yield driver
    driver.quit()


def _set(driver, element_id, value):
    el = driver.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(str(value))


def test_playground_generates_streams_stops_and_chats(server, browser, tmp_path):
    d = browser
    d.get(server + "/")
    wait = WebDriverWait(d, 20, poll_frequency=0.02)
    # the card and the curve from the metrics file
    wait.until(lambda _: "train points" in d.find_element(By.ID, "curve-note").text)
    assert d.find_element(By.ID, "curve-note").text == "40 train points, 4 validation points"
    card = d.find_element(By.ID, "card-list").text
    # the card is tinylm.report.card's when that is installed (keys as written there), else the page's own
    assert "architecture" in card and ("val loss" in card or "val_loss" in card) and "3.500" in card
    blank = d.execute_script("const c = document.createElement('canvas'); c.width = 360; c.height = 220; return c.toDataURL();")
    assert d.execute_script("return document.getElementById('curve').toDataURL();") != blank

    # a short generation: the page shows what the API gives for the same settings
    for field, value in (("temperature", 0.9), ("seed", 7), ("max_tokens", 40)):
        _set(d, field, value)
    _set(d, "prompt", "the king")
    d.find_element(By.ID, "generate").click()
    wait.until(lambda _: d.find_element(By.ID, "status").text.startswith("done"))
    api = httpx.post(server + "/v1/completions", json={"prompt": "the king", "temperature": 0.9, "seed": 7,
                                                        "max_tokens": 40, "top_k": 0, "top_p": 1}).json()
    assert d.find_element(By.ID, "output").text == api["choices"][0]["text"].strip() != ""
    assert d.find_element(By.ID, "status").text == "done (length)"

    # a long one: text appears while it is still generating, then the stop button ends it
    _set(d, "max_tokens", 4000)
    d.find_element(By.ID, "generate").click()
    wait.until(lambda _: len(d.find_element(By.ID, "output").text) > 20)
    assert d.find_element(By.ID, "status").text == "generating..."  # streamed: shown before the end
    d.find_element(By.ID, "stop").click()
    wait.until(lambda _: d.find_element(By.ID, "status").text == "done (stopped)")
    assert 20 < len(d.find_element(By.ID, "output").text) < 4000
    deadline = time.time() + 10
    while httpx.get(server + "/health").json()["busy"]:  # the stopped request left its slot
        assert time.time() < deadline, "the stopped request kept its slot"
        time.sleep(0.05)

    # chat: two questions, the second with the first turn as context
    d.find_element(By.ID, "mode-chat").click()
    assert d.find_element(By.ID, "complete-pane").is_displayed() is False
    _set(d, "max_tokens", 30)
    for n, q in enumerate(("who went to the well?", "and then?"), start=1):
        _set(d, "question", q)
        d.find_element(By.ID, "ask").click()
        wait.until(lambda _: d.find_element(By.ID, "chat-status").text.startswith("done"))
        bubbles = d.find_elements(By.CSS_SELECTOR, "#transcript .msg.assistant")
        assert len(bubbles) == n and bubbles[-1].text.strip()
    msgs = [{"role": "user", "content": "who went to the well?"}]
    api = httpx.post(server + "/v1/chat/completions", json={"messages": msgs, "temperature": 0.9, "seed": 7,
                                                             "max_tokens": 30}).json()
    assert bubbles[0].text == api["choices"][0]["message"]["content"].strip()

    shot = tmp_path / "playground.png"
    assert d.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    if os.environ.get("TINYLM_ARTIFACTS"):
        Path(os.environ["TINYLM_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["TINYLM_ARTIFACTS"]) / shot.name)
