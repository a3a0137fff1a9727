// The page's script: reads /v1/info, calls /v1/translate and /v1/attention of this server.
// Every text from the user or the server is written with textContent (never as markup), and
// the Content-Security-Policy (Trusted Types) would refuse a string assigned to innerHTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  let info = null;
  let current = 0; // number of the latest request; answers to older ones are dropped

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  // GET (no body) or POST JSON to this server; a 4xx/5xx answer throws its {"error": ...}.
  async function call(path, body) {
    const options = body === undefined ? {} : {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    };
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw new Error(`Cannot reach the server (${err.message}).`);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const reason = data && typeof data.error === "string" ? data.error : response.statusText;
      throw new Error(`The server answered ${response.status}: ${reason}`);
    }
    return data;
  }

  async function loadInfo() {
    try {
      info = await call("/v1/info");
    } catch (err) {
      showError(`Cannot load the model's description. ${err.message}`);
      return;
    }
    $("model").textContent = `${info.model}, version ${info.version}`;
    $("source-lang").textContent = info.source_lang || "?";
    $("target-lang").textContent = info.target_lang || "?";
    if (info.source_lang) $("source-lang-label").textContent = info.source_lang;
    document.title = `translator: ${info.source_lang || "?"} → ${info.target_lang || "?"}`;
    const select = $("beam");
    select.replaceChildren();
    for (const size of info.beam_sizes) {
      const option = element("option", size === 1 ? "1 (greedy)" : String(size));
      option.value = String(size);
      option.selected = size === info.default_beam_size;
      select.append(option);
    }
    $("attention-hint").hidden = !info.attention;
    $("translate").disabled = false;
  }

  function confidenceLine(translation) {
    const line = element("div", undefined, "confidence");
    if (translation.confidence === null || translation.confidence === undefined) {
      const score = translation.score === null ? "none" : translation.score.toFixed(3);
      line.append(element("span", `score ${score}`));
      return line;
    }
    const probability = Math.exp(translation.confidence);
    const meter = element("meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = probability;
    const percent = `${(100 * probability).toFixed(1)}%`;
    const label = element("span", `confidence ${percent}`, "confidence-value");
    label.title =
      "Geometric mean of the model's probability for each output piece (end of sentence " +
      "included): exp of the log-probability per piece.";
    const details = element(
      "span",
      `log-probability per piece ${translation.confidence.toFixed(3)}, ` +
        `score ${translation.score === null ? "none" : translation.score.toFixed(3)}`,
    );
    line.append(meter, label, details);
    return line;
  }

  function showTranslations(sources, answer) {
    const list = $("translations");
    list.replaceChildren();
    answer.translations.forEach((translation, i) => {
      const item = element("li", undefined, "result");
      if (sources.length > 1) item.append(element("div", sources[i], "source"));
      item.append(element("div", translation.text, "translation"), confidenceLine(translation));
      list.append(item);
    });
    $("results").hidden = false;
  }

  function drawHeatmap(data) {
    const head = element("thead");
    const top = head.insertRow();
    top.append(element("th"));
    for (const piece of data.source_pieces) {
      const th = element("th", piece);
      th.scope = "col";
      top.append(th);
    }
    const body = element("tbody");
    data.weights.forEach((row, t) => {
      const tr = body.insertRow();
      const th = element("th", data.target_pieces[t]);
      th.scope = "row";
      tr.append(th);
      row.forEach((weight, s) => {
        const td = element("td");
        td.style.backgroundColor = `rgba(37, 99, 235, ${Math.min(1, Math.max(0, weight))})`;
        td.title = `${data.target_pieces[t]} ← ${data.source_pieces[s]}: ${weight.toFixed(3)}`;
        td.dataset.weight = String(weight);
        tr.append(td);
      });
    });
    $("heatmap").replaceChildren(head, body);
    $("attention-translation").textContent = data.translation;
    $("attention").hidden = false;
  }

  async function translate(event) {
    event.preventDefault();
    if (!info) return;
    clearError();
    const sources = $("source").value.split("\n").filter((line) => line.trim() !== "");
    if (sources.length === 0) {
      showError("Type a sentence to translate.");
      return;
    }
    const request = ++current;
    const button = $("translate");
    button.disabled = true;
    $("status").textContent = "Translating…";
    $("results").hidden = true;
    $("attention").hidden = true;
    const body = { text: sources };
    if ($("beam").value) body.beam_size = Number($("beam").value);
    try {
      const answer = await call("/v1/translate", body);
      if (request !== current) return;
      showTranslations(sources, answer);
      if (info.attention && sources.length === 1) {
        const data = await call("/v1/attention", { text: sources[0] });
        if (request === current) drawHeatmap(data);
      }
    } catch (err) {
      if (request === current) showError(err.message);
    } finally {
      if (request === current) {
        button.disabled = false;
        $("status").textContent = "";
      }
    }
  }

  $("form").addEventListener("submit", translate);
  $("source").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $("form").requestSubmit();
    }
  });
  loadInfo();
})();
