"""The page at /: choose or drop an image, see its tags and scores.

Inline CSS and JS, nothing fetched from elsewhere. It posts the file to
/tag?all=1; when the API answers 401 (a server started with --api_key) it
asks for the key once and keeps it for the browser tab (sessionStorage).
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>jaxtag</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; color: #222;
         background: #f6f7f9; }
  header { padding: 10px 20px; background: #24292f; color: #fff; }
  header h1 { font-size: 18px; margin: 0; display: inline; }
  header span { opacity: .7; margin-left: 12px; font-size: 13px; }
  main { display: grid; grid-template-columns: minmax(260px, 420px) 1fr;
         gap: 20px; padding: 20px; }
  #drop { border: 2px dashed #8a94a0; border-radius: 8px; padding: 18px;
          text-align: center; background: #fff; cursor: pointer; }
  #drop.over { border-color: #0969da; background: #eef5ff; }
  #preview { max-width: 100%; max-height: 420px; margin-top: 12px;
             display: none; border-radius: 4px; }
  #error { display: none; margin-top: 12px; padding: 10px; border-radius: 6px;
           background: #ffebe9; color: #82071e; border: 1px solid #ff8182; }
  #status { margin-top: 8px; color: #57606a; font-size: 13px; }
  section { background: #fff; border-radius: 8px; padding: 12px 16px;
            margin-bottom: 14px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
  section h2 { font-size: 15px; margin: 0 0 8px; display: flex;
               align-items: center; gap: 12px; }
  section h2 .count { font-weight: normal; color: #57606a; font-size: 13px; }
  label.slider { font-weight: normal; font-size: 13px; margin-left: auto; }
  input[type=range] { width: 160px; vertical-align: middle; }
  ul { list-style: none; margin: 0; padding: 0; }
  li { display: grid; grid-template-columns: 210px 1fr 52px; gap: 8px;
       align-items: center; padding: 2px 0; }
  li .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  li .bar { height: 12px; background: #e7ebef; border-radius: 6px; }
  li .fill { height: 100%; border-radius: 6px; }
  li .score { text-align: right; font-variant-numeric: tabular-nums; }
  #rating .fill { background: #2da44e; }
  #character .fill { background: #cf222e; }
  #general .fill { background: #0969da; }
  #other .fill { background: #8250df; }
  #caption { width: 100%; box-sizing: border-box; min-height: 60px;
             font: 13px monospace; }
  button { font: inherit; padding: 4px 12px; cursor: pointer; }
  li.empty { display: block; color: #8a94a0; font-size: 13px; }
</style>
</head>
<body>
<header><h1>jaxtag</h1><span>tag an illustration with a local model</span>
</header>
<main>
  <div>
    <div id="drop">
      <b>Drop an image here</b> or <input type="file" id="file"
        accept="image/*">
    </div>
    <div id="error" role="alert"></div>
    <div id="status"></div>
    <img id="preview" alt="the tagged image">
  </div>
  <div id="results">
    <section id="rating"><h2>Rating</h2><ul></ul></section>
    <section id="character" data-category="character"><h2>Character
      <span class="count"></span>
      <label class="slider">threshold <input type="range" min="0" max="1"
        step="0.01" value="0.85"> <output></output></label></h2><ul></ul>
    </section>
    <section id="general" data-category="general"><h2>General
      <span class="count"></span>
      <label class="slider">threshold <input type="range" min="0" max="1"
        step="0.01" value="0.35"> <output></output></label></h2><ul></ul>
    </section>
    <section id="other" data-category="other" hidden><h2>Other
      <span class="count"></span>
      <label class="slider">threshold <input type="range" min="0" max="1"
        step="0.01" value="0.5"> <output></output></label></h2><ul></ul>
    </section>
    <section><h2>Caption <button id="copy" type="button">Copy</button>
      <span class="count" id="copied"></span></h2>
      <textarea id="caption" readonly></textarea></section>
  </div>
</main>
<script>
"use strict";
let result = null;
const $ = (s) => document.querySelector(s);

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.style.display = message ? "block" : "none";
}

function row(name, score) {
  const li = document.createElement("li");
  li.dataset.tag = name;
  li.dataset.score = score;
  li.innerHTML = '<span class="name"></span><span class="bar">' +
    '<span class="fill"></span></span><span class="score"></span>';
  li.querySelector(".name").textContent = name;
  li.querySelector(".name").title = name;
  li.querySelector(".fill").style.width = (100 * score).toFixed(1) + "%";
  li.querySelector(".fill").style.display = "block";
  li.querySelector(".score").textContent = score.toFixed(3);
  return li;
}

function shown(category) {
  if (!result || !result.scores[category]) return [];
  const slider = document.querySelector("#" + category + " input");
  const t = parseFloat(slider.value);
  return Object.entries(result.scores[category]).filter(([, s]) => s >= t);
}

function render() {
  for (const section of document.querySelectorAll("section[data-category]")) {
    const category = section.dataset.category;
    const slider = section.querySelector("input");
    section.querySelector("output").textContent =
      parseFloat(slider.value).toFixed(2);
    const ul = section.querySelector("ul");
    ul.replaceChildren();
    if (!result) continue;
    const tags = shown(category);
    for (const [name, score] of tags) ul.appendChild(row(name, score));
    if (!tags.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "no tag at or above this threshold";
      ul.appendChild(li);
    }
    section.querySelector(".count").textContent =
      tags.length + (tags.length === 1 ? " tag" : " tags");
  }
  const ratings = $("#rating ul");
  ratings.replaceChildren();
  if (result) {
    for (const [name, score] of Object.entries(result.rating)
                                      .sort((a, b) => b[1] - a[1])) {
      ratings.appendChild(row(name, score));
    }
  }
  // The tag command's caption: general, then character, joined by ", ".
  $("#caption").value = ["general", "character"]
    .flatMap((c) => shown(c).map(([name]) => name)).join(", ");
}

async function tagFile(file) {
  showError("");
  if (!file) return;
  $("#status").textContent = "tagging " + file.name + " ...";
  const preview = $("#preview");
  try {
    const headers = {"X-Filename": encodeURIComponent(file.name)};
    const key = sessionStorage.getItem("jaxtag-api-key");
    if (key) headers["Authorization"] = "Bearer " + key;
    const response = await fetch("/tag?all=1",
                                 {method: "POST", body: file, headers});
    const body = await response.json();
    if (response.status === 401) {  // a server started with --api_key
      const entered = window.prompt("This server needs its API key:");
      if (entered) {
        sessionStorage.setItem("jaxtag-api-key", entered);
        return tagFile(file);
      }
    }
    if (!response.ok) {
      result = null;
      preview.style.display = "none";
      render();
      showError("Error " + response.status + ": " + body.error);
      $("#status").textContent = "";
      return;
    }
    result = body;
    preview.src = URL.createObjectURL(file);
    preview.style.display = "block";
    for (const [category, t] of Object.entries(result.thresholds)) {
      const section = document.querySelector("#" + category);
      if (!section || !section.dataset.category) continue;
      section.hidden = false;
      section.querySelector("input").value = t;
    }
    $("#status").textContent = file.name + ": tagged";
    render();
  } catch (e) {
    showError("The server did not answer: " + e);
    $("#status").textContent = "";
  }
}

$("#file").addEventListener("change", (e) => tagFile(e.target.files[0]));
const drop = $("#drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  tagFile(e.dataTransfer.files[0]);
});
for (const slider of document.querySelectorAll("section input[type=range]")) {
  slider.addEventListener("input", render);
}
$("#copy").addEventListener("click", async () => {
  const text = $("#caption").value;
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {  // plain http on another host: the older path
    $("#caption").select();
    document.execCommand("copy");
  }
  $("#copied").textContent = "copied " + (text ? text.split(", ").length : 0)
    + " tags";
});
render();
</script>
</body>
</html>
"""
