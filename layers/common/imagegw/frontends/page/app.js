// The gateway's page (imagegw/frontends/webpage.py): plain JavaScript, no build step, no
// inline code (the page's Content-Security-Policy allows scripts from this origin only).
// Every URL is relative to the page's <base href> (the gateway's public URL), so the page
// works at a Function URL and under a REST API's stage path. Text from people or the
// gateway is only ever set as textContent: a prompt is never markup.
"use strict";

(function () {
  const KEY = "imagegw.key";
  const GALLERY = "imagegw.gallery";
  const JOBS = "imagegw.jobs";
  const MAX_GALLERY = 60;
  const MAX_KEPT_URL = 300000; // an inline (data URI) result larger than this is not kept
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const providers = (body.dataset.providers || "").split(" ").filter(Boolean);
  const tokenless = body.dataset.tokenless === "yes";
  const base = document.baseURI;
  let attached = null; // a data URI or a link of the image to edit
  let lang = "curl";

  // ------------------------------------------------------------------ small helpers

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else node.setAttribute(name, value);
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function load(name, fallback) {
    try {
      const value = JSON.parse(localStorage.getItem(name) || "null");
      return value === null ? fallback : value;
    } catch (e) {
      return fallback;
    }
  }

  function save(name, value) {
    try {
      localStorage.setItem(name, JSON.stringify(value));
    } catch (e) {
      notice("This browser could not keep the gallery (storage is full or off).");
    }
  }

  function notice(text) {
    $("notice").textContent = text || "";
  }

  function key() {
    return $("key").value.trim();
  }

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    if (key()) h["Authorization"] = "Bearer " + key();
    return h;
  }

  function prefix(provider) {
    return provider ? provider + "/" : "";
  }

  function isEditModel(model) {
    return /edit/i.test(model);
  }

  async function errorText(response) {
    try {
      const data = await response.json();
      if (data && data.error) return data.error.message + (data.error.code ? " (" + data.error.code + ")" : "");
    } catch (e) {
      /* not JSON */
    }
    return "HTTP " + response.status;
  }

  // ------------------------------------------------------------------ key, providers, models

  function keyChanged() {
    const value = key();
    if (value) localStorage.setItem(KEY, value);
    else localStorage.removeItem(KEY);
    const hint = value.startsWith("gk-")
      ? "A gateway key: the gateway generates with its own provider tokens, on your quota."
      : value
        ? "A provider token: passed on to the provider as yours."
        : tokenless
          ? "No key: the demo provider works without one."
          : "Paste a gateway key or your provider token.";
    $("key-hint").textContent = hint;
    $("account").hidden = !value.startsWith("gk-");
    if (value.startsWith("gk-")) refreshUsage();
    renderCode();
  }

  async function loadModels() {
    const provider = $("provider").value;
    const list = $("model-list");
    list.replaceChildren(el("span", { class: "hint", text: "loading…" }));
    try {
      const response = await fetch(prefix(provider) + "v1/models", { headers: headers(false) });
      if (!response.ok) throw new Error(await errorText(response));
      const data = await response.json();
      const ids = (data.data || []).map((m) => m.id);
      list.replaceChildren();
      ids.forEach((id, index) => {
        const box = el("input", { type: "checkbox", value: id });
        box.checked = index === 0;
        box.addEventListener("change", renderCode);
        list.append(el("label", {}, [box, document.createTextNode(id + (isEditModel(id) ? " (edit)" : ""))]));
      });
      if (!ids.length) list.replaceChildren(el("span", { class: "hint", text: "no models listed" }));
    } catch (e) {
      list.replaceChildren(el("span", { class: "error", text: "Models could not be listed: " + e.message }));
    }
    renderCode();
  }

  function chosenModels() {
    return [...document.querySelectorAll("#model-list input:checked")].map((box) => box.value);
  }

  function selectEditModel() {
    const boxes = [...document.querySelectorAll("#model-list input")];
    if (chosenModels().some(isEditModel)) return;
    const edit = boxes.find((box) => isEditModel(box.value));
    if (!edit) return;
    boxes.forEach((box) => (box.checked = box === edit));
  }

  // ------------------------------------------------------------------ the request

  function fields() {
    const extra = {};
    const n = parseInt($("n").value, 10);
    if (n > 1) extra.n = n;
    if ($("seed").value !== "") extra.seed = parseInt($("seed").value, 10);
    if ($("size").value) extra.size = $("size").value;
    else if ($("ratio").value) extra.aspect_ratio = $("ratio").value;
    return extra;
  }

  function messages(imageRef) {
    const prompt = $("prompt").value;
    if (!imageRef) return [{ role: "user", content: prompt }];
    return [
      {
        role: "user",
        content: [
          { type: "text", text: prompt },
          { type: "image_url", image_url: { url: imageRef } },
        ],
      },
    ];
  }

  function requestBody(model, stream, imageRef) {
    return Object.assign({ model: model, messages: messages(imageRef), stream: stream }, fields());
  }

  // ------------------------------------------------------------------ a run (one model)

  function runCard(provider, model, prompt) {
    const card = el("article", { class: "run" });
    const progress = el("div", { class: "progress", role: "status", text: "sending…" });
    const steps = el("ol", { class: "steps" });
    const images = el("div", { class: "grid" });
    const error = el("div", { class: "error" });
    card.append(
      el("h3", { text: provider + " · " + model }),
      el("p", { class: "prompt", text: prompt }),
      progress,
      steps,
      images,
      error,
    );
    $("runs").append(card);
    return { card, progress, steps, images, error };
  }

  function step(view, text) {
    const line = text.trim();
    if (!line) return;
    view.progress.textContent = line;
    view.steps.append(el("li", { text: line }));
    view.steps.scrollTop = view.steps.scrollHeight;
  }

  function imageLinks(markdown) {
    const links = [];
    const pattern = /!\[[^\]]*\]\(([^)\s]+)\)/g;
    let match;
    while ((match = pattern.exec(markdown))) links.push(match[1]);
    const failures = markdown
      .split("\n")
      .filter((line) => line.startsWith("> "))
      .map((line) => line.slice(2));
    return { links, failures };
  }

  function showResult(view, markdown, meta) {
    const { links, failures } = imageLinks(markdown);
    links.forEach((url) => {
      view.images.append(figure(url, meta));
      remember(Object.assign({ url: url, at: Date.now() }, meta));
    });
    if (failures.length) view.error.textContent = failures.join("\n");
    if (!links.length && !failures.length) view.error.textContent = markdown || "No image came back.";
    view.progress.textContent = links.length ? "done: " + links.length + " image" + (links.length > 1 ? "s" : "") : "no image";
    view.progress.classList.add("done");
    renderGallery();
  }

  async function streamRun(provider, model, imageRef, view, meta) {
    const response = await fetch(prefix(provider) + "v1/chat/completions", {
      method: "POST",
      headers: headers(true),
      body: JSON.stringify(requestBody(model, true, imageRef)),
    });
    if (!response.ok) throw new Error(await errorText(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let content = "";
    let reasoning = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          let chunk;
          try {
            chunk = JSON.parse(data);
          } catch (e) {
            continue;
          }
          if (chunk.error) throw new Error(chunk.error.message + " (" + chunk.error.code + ")");
          const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
          if (delta.reasoning_content) {
            reasoning += delta.reasoning_content;
            const lines = reasoning.split("\n");
            reasoning = lines.pop();
            lines.forEach((text) => step(view, text));
          }
          if (delta.content) content += delta.content;
        }
      }
    }
    showResult(view, content, meta);
  }

  async function jobRun(provider, model, imageRef, view, meta) {
    const h = headers(true);
    h["Prefer"] = "respond-async";
    const response = await fetch(prefix(provider) + "v1/chat/completions", {
      method: "POST",
      headers: h,
      body: JSON.stringify(requestBody(model, false, imageRef)),
    });
    if (!response.ok) throw new Error(await errorText(response));
    const job = await response.json();
    if (response.status !== 202) {
      showResult(view, job.choices[0].message.content || "", meta);
      return;
    }
    const jobs = load(JOBS, []);
    jobs.unshift({ id: job.id, provider: provider, model: model, prompt: meta.prompt, at: Date.now(), status: job.status });
    save(JOBS, jobs.slice(0, 30));
    renderJobs();
    step(view, "job " + job.id + " " + job.status);
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const state = await readJob(provider, job.id);
      if (state.status === "succeeded") {
        showResult(view, state.choices[0].message.content || "", meta);
        break;
      }
      if (state.status === "failed") throw new Error(state.error ? state.error.message : "the job failed");
      step(view, state.status + (state.progress ? " · " + state.progress.state : ""));
    }
    renderJobs();
  }

  async function readJob(provider, id) {
    const response = await fetch(prefix(provider) + "v1/jobs/" + encodeURIComponent(id), { headers: headers(false) });
    if (!response.ok) throw new Error(await errorText(response));
    const state = await response.json();
    const jobs = load(JOBS, []);
    const kept = jobs.find((job) => job.id === id);
    if (kept) {
      kept.status = state.status;
      save(JOBS, jobs);
    }
    return state;
  }

  async function generate() {
    const provider = $("provider").value;
    const models = chosenModels();
    const prompt = $("prompt").value;
    if (!models.length) return notice("Tick a model first.");
    if (!prompt.trim()) return notice("Write a prompt first.");
    notice("");
    $("generate").disabled = true;
    $("runs").replaceChildren();
    const asJob = $("as-job").checked;
    const imageRef = attached;
    await Promise.all(
      models.map(async (model) => {
        const view = runCard(provider, model, prompt);
        const meta = { provider: provider, model: model, prompt: prompt };
        try {
          if (asJob) await jobRun(provider, model, imageRef, view, meta);
          else await streamRun(provider, model, imageRef, view, meta);
        } catch (e) {
          view.error.textContent = e.message;
          view.progress.textContent = "failed";
        }
      }),
    );
    $("generate").disabled = false;
    if (key().startsWith("gk-")) refreshUsage();
  }

  // ------------------------------------------------------------------ images and the gallery

  function figure(url, meta) {
    const img = el("img", { src: url, alt: meta.prompt, loading: "lazy" });
    const open = el("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, [img]);
    const edit = el("button", { type: "button", class: "quiet edit-this", text: "Edit this" });
    edit.addEventListener("click", () => {
      attach(url);
      if ($("provider").value !== meta.provider && providers.includes(meta.provider)) {
        $("provider").value = meta.provider;
        loadModels().then(selectEditModel);
      } else {
        selectEditModel();
      }
      $("prompt").focus();
      notice("Editing this image: write what to change, then Generate.");
      renderCode();
    });
    return el("figure", {}, [open, el("figcaption", { text: meta.model + " · " + meta.prompt }), el("div", { class: "actions" }, [edit])]);
  }

  function remember(item) {
    if (item.url.length > MAX_KEPT_URL) return;
    const items = load(GALLERY, []);
    items.unshift(item);
    save(GALLERY, items.slice(0, MAX_GALLERY));
  }

  function renderGallery() {
    const items = load(GALLERY, []);
    const gallery = $("gallery");
    gallery.replaceChildren(...items.map((item) => figure(item.url, item)));
    if (!items.length) gallery.append(el("p", { class: "hint", text: "Nothing yet: what you make here is kept in this browser." }));
  }

  function renderJobs() {
    const jobs = load(JOBS, []);
    $("jobs-panel").hidden = !jobs.length;
    $("jobs").replaceChildren(
      ...jobs.map((job) =>
        el("li", { text: job.id + " · " + job.status + " · " + job.model + " · " + job.prompt.slice(0, 80) }),
      ),
    );
  }

  async function refreshJobs() {
    for (const job of load(JOBS, [])) {
      if (job.status === "succeeded" || job.status === "failed") continue;
      try {
        await readJob(job.provider, job.id);
      } catch (e) {
        /* shown as it was */
      }
    }
    renderJobs();
  }

  // ------------------------------------------------------------------ the image to edit

  function attach(ref) {
    attached = ref;
    $("attached").hidden = !ref;
    if (ref) $("attached-img").src = ref;
    else $("attached-img").removeAttribute("src");
    renderCode();
  }

  function attachFile(file) {
    if (!file) return;
    if (!/^image\//.test(file.type)) return notice("That file is not an image.");
    const reader = new FileReader();
    reader.onload = () => {
      attach(String(reader.result));
      selectEditModel();
      notice("Image attached: write what to change, then Generate.");
    };
    reader.readAsDataURL(file);
  }

  // ------------------------------------------------------------------ usage (gateway keys)

  async function refreshUsage() {
    const target = $("usage");
    try {
      const response = await fetch("v1/usage", { headers: headers(false) });
      if (!response.ok) throw new Error(await errorText(response));
      const usage = await response.json();
      const rows = [
        ["key", usage.key],
        ["images today", usage.today.images + (usage.daily_quota ? " of " + usage.daily_quota : " (no daily quota)")],
        ["quota resets", usage.resets_at],
        ["images this month", usage.month.images],
        ["expires", usage.expires_at || "never"],
      ];
      for (const [model, count] of Object.entries(usage.today.by_model || {})) rows.push(["today · " + model, count]);
      target.replaceChildren(
        el("table", {}, rows.map(([name, value]) => el("tr", {}, [el("th", { text: name }), el("td", { text: String(value) })]))),
      );
    } catch (e) {
      target.replaceChildren(el("p", { class: "error", text: "Usage could not be read: " + e.message }));
    }
  }

  // ------------------------------------------------------------------ the request as code

  function snippet() {
    const provider = $("provider").value;
    const model = chosenModels()[0] || "MODEL";
    const url = new URL(prefix(provider) + "v1/chat/completions", base).href;
    const apiBase = new URL(prefix(provider) + "v1", base).href;
    const imageRef = attached && attached.startsWith("data:") ? "data:image/png;base64,..." : attached;
    const payload = requestBody(model, true, imageRef);
    const json = JSON.stringify(payload, null, 2);
    const keyed = Boolean(key()) || !tokenless;
    if (lang === "curl") {
      const lines = ["curl -N " + url];
      if (keyed) lines.push('  -H "Authorization: Bearer $IMAGEGW_KEY"');
      lines.push('  -H "Content-Type: application/json"');
      lines.push("  -d '" + json.replace(/'/g, "'\\''") + "'");
      return lines.join(" \\\n");
    }
    const extra = fields();
    if (lang === "python") {
      return [
        "import os",
        "from openai import OpenAI",
        "",
        "client = OpenAI(base_url=" + JSON.stringify(apiBase) + ', api_key=os.environ.get("IMAGEGW_KEY", "none"))',
        "stream = client.chat.completions.create(",
        "    model=" + JSON.stringify(model) + ",",
        "    messages=" + JSON.stringify(payload.messages) + ",",
        "    stream=True,",
        "    extra_body=" + JSON.stringify(extra) + ",",
        ")",
        "for chunk in stream:",
        "    delta = chunk.choices[0].delta if chunk.choices else None",
        "    if delta is not None:",
        '        print(getattr(delta, "reasoning_content", None) or delta.content or "", end="", flush=True)',
      ].join("\n");
    }
    return [
      "const response = await fetch(" + JSON.stringify(url) + ", {",
      '  method: "POST",',
      "  headers: {",
      '    "Content-Type": "application/json",',
      keyed ? '    Authorization: "Bearer " + process.env.IMAGEGW_KEY,' : null,
      "  },",
      "  body: JSON.stringify(" + json.split("\n").join("\n  ") + "),",
      "});",
      "// a stream of server-sent events: progress in delta.reasoning_content, the image in delta.content",
      "const reader = response.body.getReader();",
      "for (let r = await reader.read(); !r.done; r = await reader.read()) {",
      "  process.stdout.write(new TextDecoder().decode(r.value));",
      "}",
    ]
      .filter((line) => line !== null)
      .join("\n");
  }

  function renderCode() {
    $("snippet").textContent = snippet();
    document.querySelectorAll(".tab").forEach((tab) => tab.setAttribute("aria-selected", String(tab.dataset.lang === lang)));
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    $("api-base").textContent = new URL("v1", base).href;
    for (const name of providers) $("provider").append(el("option", { value: name, text: name }));
    $("key").value = localStorage.getItem(KEY) || "";
    $("key").addEventListener("input", keyChanged);
    $("key-form").addEventListener("submit", (e) => e.preventDefault());
    $("forget").addEventListener("click", () => {
      $("key").value = "";
      keyChanged();
    });
    $("provider").addEventListener("change", loadModels);
    ["prompt", "n", "seed", "size", "ratio"].forEach((id) => $(id).addEventListener("input", renderCode));
    $("generate").addEventListener("click", generate);
    $("file").addEventListener("change", (e) => attachFile(e.target.files[0]));
    $("detach").addEventListener("click", () => attach(null));
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const file = e.dataTransfer.files[0];
      if (file) attachFile(file);
      else {
        const link = e.dataTransfer.getData("text/uri-list");
        if (link) attach(link.split("\n")[0].trim());
      }
    });
    document.querySelectorAll(".tab").forEach((tab) =>
      tab.addEventListener("click", () => {
        lang = tab.dataset.lang;
        renderCode();
      }),
    );
    $("copy").addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText($("snippet").textContent);
        notice("Copied.");
      } catch (e) {
        notice("Select the code and copy it (the clipboard is not available here).");
      }
    });
    $("clear-gallery").addEventListener("click", () => {
      save(GALLERY, []);
      renderGallery();
    });
    $("refresh-account").addEventListener("click", refreshUsage);
    $("refresh-jobs").addEventListener("click", refreshJobs);
    keyChanged();
    renderGallery();
    renderJobs();
    loadModels();
  }

  init();
})();
