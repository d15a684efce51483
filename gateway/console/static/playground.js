// The playground: images, a mask drawn on a canvas, submit as an async task, poll, show.
// The key never reaches this script: the console's server forwards to the public API.
(function () {
  "use strict";
  var form = document.getElementById("playground");
  if (!form) { return; }
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var images = [];  // File or Blob objects, in order
  var list = document.getElementById("image-list");
  var picker = document.getElementById("images");
  var drop = document.getElementById("dropzone");
  var maskTools = document.getElementById("mask-tools");
  var canvas = document.getElementById("mask-canvas");
  var base = document.getElementById("mask-base");
  var ctx = canvas.getContext("2d");
  var useMask = document.getElementById("use-mask");
  var tool = "brush";
  var drawing = false;
  var painted = false;

  function $(id) { return document.getElementById(id); }

  function renderList() {
    list.innerHTML = "";
    images.forEach(function (file, i) {
      var li = document.createElement("li");
      var img = document.createElement("img");
      img.src = URL.createObjectURL(file);
      img.alt = "Input " + (i + 1);
      var remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", "Remove input " + (i + 1));
      remove.addEventListener("click", function () { images.splice(i, 1); renderList(); });
      li.appendChild(img); li.appendChild(remove);
      list.appendChild(li);
    });
    maskTools.hidden = images.length === 0;
    if (images.length) { loadBase(images[0]); }
    updateCode();
  }

  function addFiles(files) {
    Array.prototype.forEach.call(files, function (f) {
      if (/^image\//.test(f.type)) { images.push(f); }
    });
    renderList();
  }

  picker.addEventListener("change", function () { addFiles(picker.files); picker.value = ""; });
  ["dragenter", "dragover"].forEach(function (name) {
    drop.addEventListener(name, function (e) { e.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (name) {
    drop.addEventListener(name, function () { drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (e) { e.preventDefault(); addFiles(e.dataTransfer.files); });

  var baseFile = null;
  function loadBase(file) {
    if (baseFile === file) { return; }
    baseFile = file;
    base.onload = function () {
      canvas.width = base.naturalWidth;
      canvas.height = base.naturalHeight;
      clearMask();
    };
    base.src = URL.createObjectURL(file);
  }

  function clearMask() {
    ctx.globalCompositeOperation = "source-over";
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    painted = false;
  }

  function point(e) {
    var r = canvas.getBoundingClientRect();
    return { x: (e.clientX - r.left) * canvas.width / r.width,
             y: (e.clientY - r.top) * canvas.height / r.height };
  }

  function paint(e) {
    var p = point(e);
    var size = Number($("brush-size").value) * canvas.width / canvas.getBoundingClientRect().width;
    ctx.fillStyle = tool === "brush" ? "#fff" : "#000";
    ctx.beginPath();
    ctx.arc(p.x, p.y, size / 2, 0, Math.PI * 2);
    ctx.fill();
    painted = true;
    useMask.checked = true;
  }

  canvas.addEventListener("pointerdown", function (e) {
    drawing = true; canvas.setPointerCapture(e.pointerId); paint(e);
  });
  canvas.addEventListener("pointermove", function (e) { if (drawing) { paint(e); } });
  canvas.addEventListener("pointerup", function () { drawing = false; updateCode(); });

  document.querySelectorAll("[data-tool]").forEach(function (button) {
    button.addEventListener("click", function () {
      tool = button.getAttribute("data-tool");
      document.querySelectorAll("[data-tool]").forEach(function (b) {
        b.setAttribute("aria-pressed", String(b === button));
      });
    });
  });
  $("mask-invert").addEventListener("click", function () {
    var data = ctx.getImageData(0, 0, canvas.width, canvas.height);
    for (var i = 0; i < data.data.length; i += 4) {
      data.data[i] = 255 - data.data[i];
      data.data[i + 1] = 255 - data.data[i + 1];
      data.data[i + 2] = 255 - data.data[i + 2];
      data.data[i + 3] = 255;
    }
    ctx.putImageData(data, 0, 0);
    painted = true; useMask.checked = true;
  });
  $("mask-clear").addEventListener("click", function () { clearMask(); useMask.checked = false; });
  $("mask-file").addEventListener("change", function () {
    var f = this.files[0];
    if (!f) { return; }
    var img = new Image();
    img.onload = function () {
      clearMask();
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      painted = true; useMask.checked = true; updateCode();
    };
    img.src = URL.createObjectURL(f);
  });

  function maskBlob() {
    return new Promise(function (resolve) { canvas.toBlob(resolve, "image/png"); });
  }

  function field(name) { var el = form.elements[name]; return el ? el.value.trim() : ""; }

  // -- the equivalent code ------------------------------------------------------------
  function updateCode() {
    var url = form.getAttribute("data-base-url") + "/v1";
    var edit = images.length > 0;
    var opts = { model: field("model"), prompt: field("prompt") || "…" };
    ["aspect_ratio", "size", "seed", "output_format", "n"].forEach(function (name) {
      var v = field(name);
      if (v && !(name === "n" && v === "1") && !(name === "output_format" && v === "png")) { opts[name] = v; }
    });
    var mask = edit && useMask.checked;
    var curl = ["curl " + url + (edit ? "/images/edits" : "/images/generations") + " \\",
                '  -H "Authorization: Bearer $FLUXGATE_API_KEY" \\'];
    if (edit) {
      Object.keys(opts).forEach(function (k) { curl.push("  -F " + JSON.stringify(k + "=" + opts[k]) + " \\"); });
      images.forEach(function (f, i) { curl.push('  -F "image[]=@' + (f.name || "image" + i + ".png") + '" \\'); });
      if (mask) { curl.push('  -F "mask=@mask.png" \\'); }
    } else {
      curl.push('  -H "Content-Type: application/json" \\');
      curl.push("  -d '" + JSON.stringify(opts).replace(/'/g, "'\\''") + "' \\");
    }
    curl[curl.length - 1] = curl[curl.length - 1].replace(/ \\$/, "");
    var known = { model: 1, prompt: 1, size: 1, n: 1 };
    var extra = {};
    Object.keys(opts).forEach(function (k) { if (!known[k]) { extra[k] = isNaN(Number(opts[k])) ? opts[k] : Number(opts[k]); } });
    var py = ["from openai import OpenAI", "", 'client = OpenAI(base_url="' + url + '", api_key=os.environ["FLUXGATE_API_KEY"])'];
    py.unshift("import os");
    var args = ["    model=" + JSON.stringify(opts.model), "    prompt=" + JSON.stringify(opts.prompt)];
    if (opts.size) { args.push("    size=" + JSON.stringify(opts.size)); }
    if (opts.n) { args.push("    n=" + opts.n); }
    if (Object.keys(extra).length) { args.push("    extra_body=" + JSON.stringify(extra)); }
    if (edit) {
      args.splice(1, 0, "    image=[" + images.map(function (f, i) { return 'open("' + (f.name || "image" + i + ".png") + '", "rb")'; }).join(", ") + "]");
      if (mask) { args.splice(2, 0, '    mask=open("mask.png", "rb")'); }
      py.push("result = client.images.edit(");
    } else {
      py.push("result = client.images.generate(");
    }
    py = py.concat([args.join(",\n"), ")", "print(result.data[0].url)"]);
    var js = ['import OpenAI, { toFile } from "openai";', 'import fs from "node:fs";', "",
              'const client = new OpenAI({ baseURL: "' + url + '", apiKey: process.env.FLUXGATE_API_KEY });'];
    var body = { model: opts.model, prompt: opts.prompt };
    Object.keys(opts).forEach(function (k) { if (k !== "model" && k !== "prompt") { body[k] = isNaN(Number(opts[k])) ? opts[k] : Number(opts[k]); } });
    var bodyText = JSON.stringify(body, null, 2).replace(/\n/g, "\n  ");
    if (edit) {
      var files = images.map(function (f, i) { return 'await toFile(fs.createReadStream("' + (f.name || "image" + i + ".png") + '"))'; });
      js.push("const result = await client.images.edit({");
      js.push("  ...(" + bodyText + "),");
      js.push("  image: [" + files.join(", ") + "],");
      if (mask) { js.push('  mask: await toFile(fs.createReadStream("mask.png")),'); }
      js.push("});");
    } else {
      js.push("const result = await client.images.generate(" + bodyText + ");");
    }
    js.push("console.log(result.data[0].url);");
    $("code-curl").firstChild.textContent = curl.join("\n");
    $("code-python").firstChild.textContent = py.join("\n");
    $("code-js").firstChild.textContent = js.join("\n");
  }
  form.addEventListener("input", updateCode);
  form.addEventListener("change", updateCode);
  document.querySelectorAll('.tabs [role="tab"]').forEach(function (tab) {
    tab.addEventListener("click", function () {
      document.querySelectorAll('.tabs [role="tab"]').forEach(function (t) {
        var on = t === tab;
        t.setAttribute("aria-selected", String(on));
        $(t.getAttribute("aria-controls")).hidden = !on;
      });
    });
  });

  // -- submit and follow --------------------------------------------------------------
  function show(text, value) {
    $("progress-box").hidden = false;
    $("progress-text").textContent = text;
    if (value !== undefined) { $("progress").value = value; }
  }
  function fail(message) {
    var box = $("pg-error");
    box.textContent = message; box.hidden = false;
    $("generate").disabled = false;
  }

  function poll(taskId) {
    fetch("/console/playground/tasks/" + encodeURIComponent(taskId), { credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { throw new Error("signed out"); }
        return r.json().then(function (b) { return [r, b]; });
      })
      .then(function (rb) {
        var task = rb[1];
        if (!rb[0].ok) { return fail((task.error && task.error.message) || "The task could not be read."); }
        show(task.status + " (" + task.progress + " %)", task.progress);
        if (task.status === "completed") { return done(task); }
        if (task.status === "failed" || task.status === "cancelled") {
          return fail((task.error && task.error.message) || "The job " + task.status + ".");
        }
        setTimeout(function () { poll(taskId); }, 700);
      }, function (err) {
        if (err && err.message === "signed out") { return fail("Your session ended: sign in again."); }
        setTimeout(function () { poll(taskId); }, 2000);
      });
  }

  function done(task) {
    $("generate").disabled = false;
    var results = $("results");
    (task.result.data || []).forEach(function (image, i) {
      var li = document.createElement("li");
      li.className = "result card";
      var img = document.createElement("img");
      img.src = image.url;
      img.alt = "Result " + (i + 1) + " for: " + field("prompt");
      var p = document.createElement("p");
      var job = (task.jobs || [])[i];
      if (job) {
        var a = document.createElement("a");
        a.href = "/console/jobs/" + job; a.textContent = "Job " + job;
        p.appendChild(a);
        p.appendChild(document.createTextNode(" · "));
      }
      var again = document.createElement("button");
      again.type = "button"; again.textContent = "Edit this";
      again.addEventListener("click", function () {
        fetch(image.url).then(function (r) { return r.blob(); }).then(function (blob) {
          var name = "result." + (blob.type.split("/")[1] || "png");
          images = [new File([blob], name, { type: blob.type })];
          baseFile = null; useMask.checked = false;
          renderList();
          $("prompt").focus();
        });
      });
      p.appendChild(again);
      li.appendChild(img); li.appendChild(p);
      results.insertBefore(li, results.firstChild);
    });
    show("completed", 100);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    $("pg-error").hidden = true;
    $("generate").disabled = true;
    show("sending…", 0);
    var data = new FormData();
    ["model", "prompt", "aspect_ratio", "size", "seed", "output_format", "n"].forEach(function (name) {
      var v = field(name);
      if (v) { data.append(name, v); }
    });
    images.forEach(function (f, i) { data.append("image", f, f.name || "image" + i + ".png"); });
    var ready = images.length && useMask.checked ? maskBlob() : Promise.resolve(null);
    ready.then(function (mask) {
      if (mask) { data.append("mask", mask, "mask.png"); }
      return fetch(form.action, { method: "POST", body: data, credentials: "same-origin",
                                  headers: { "X-CSRF-Token": csrf } });
    }).then(function (r) { return r.json().then(function (b) { return [r, b]; }); })
      .then(function (rb) {
        if (rb[0].status !== 202) {
          return fail((rb[1].error && rb[1].error.message) || "The request was refused (" + rb[0].status + ").");
        }
        show(rb[1].status, rb[1].progress || 0);
        poll(rb[1].id);
      }, function () { fail("The console could not be reached."); });
  });
  updateCode();
})();
