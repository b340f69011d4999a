// vpltool report: the table of images (sort, filter, pages) and the detail view of one image.
// Part of vpltool (MIT licence). Plain browser JavaScript, no framework: the page must open from disk offline.
// Data: window.VPL.meta (data/meta.js) and VPL.rows[split] (data/rows-*.js); a detail view loads d/<s>/<r>.js.
(function () {
  "use strict";
  var V = window.VPL, M = V.meta;
  // fields of a row (vpltool/report/rows.py: make_row)
  var ROW = 0, ID = 1, LABELS = 2, THUMB = 3, DETAIL = 4, HASGT = 5, PRESENT = 6, MIOU = 7;
  var DETAIL_SIDE = 300; // CSS pixels of the detail view's long side
  var state = {split: 0, sort: null, desc: false, cls: "", page: 0, size: M.page_size};
  var details = {};

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "style") node.style.cssText = attrs[k];
      else if (k.slice(0, 2) === "on") node.addEventListener(k.slice(2), attrs[k]);
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }
  function pct(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1); }
  function signed(v) {
    if (v === null) return "–";
    var text = (100 * v).toFixed(1);
    return text === "0.0" || text === "-0.0" ? "0.0" : (v > 0 ? "+" : "") + text;
  }
  function rgb(c) { return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")"; }
  function swatch(k) {
    return el("span", {"class": "label"}, [el("i", {style: "background:" + rgb(M.palette[k] || [0, 0, 0])}),
                                            document.createTextNode(M.classes[k])]);
  }

  // ------------------------------------------------------------------ the table
  function split() { return M.splits[state.split]; }
  function slotOf(sp, j) { return 1 + (sp.gt ? 1 : 0) + j; } // thumbnail strip: image, GT, columns
  function thumbSlots(sp) { return slotOf(sp, sp.columns.length); }
  function maskSlots(sp) {
    return (sp.gt ? 1 : 0) + sp.columns.filter(function (c) { return c.kind === "mask"; }).length;
  }
  function colIndex(sp, name) {
    for (var j = 0; j < sp.columns.length; j++) if (sp.columns[j].name === name) return j;
    return -1;
  }
  function delta(sp, row, pair) {
    var a = row[MIOU][colIndex(sp, pair[0])], b = row[MIOU][colIndex(sp, pair[1])];
    return a === null || b === null ? null : b - a;
  }
  function value(sp, row, key) {
    if (key === "id") return row[ID];
    var kind = key.split(":")[0], index = +key.split(":")[1];
    if (kind === "col") return row[MIOU][index];
    return delta(sp, row, sp.pairs[index]);
  }
  function view() {
    var sp = split(), rows = V.rows[state.split], cls = state.cls === "" ? null : +state.cls;
    var shown = cls === null ? rows.slice() : rows.filter(function (r) { return r[LABELS].indexOf(cls) >= 0; });
    if (state.sort !== null) {
      var key = state.sort, sign = state.desc ? -1 : 1;
      shown.sort(function (a, b) {
        var x = value(sp, a, key), y = value(sp, b, key);
        if (x === null && y === null) return a[ROW] - b[ROW];
        if (x === null) return 1; // no figure: last, either way
        if (y === null) return -1;
        if (x < y) return -sign;
        if (x > y) return sign;
        return a[ROW] - b[ROW];
      });
    }
    return shown;
  }
  function crop(src, slot, slots, w, h, scale, pixelated, eager) {
    // picture ``slot`` of a strip of ``slots`` equal-size pictures: a window onto the strip, scaled; the table's
    // load lazily (only the rows in view), the detail view's at once
    var img = el("img", {src: src, alt: "", loading: eager ? "eager" : "lazy", decoding: "async",
                         style: "width:" + (slots * w * scale) + "px;height:" + (h * scale) + "px;margin-left:-" +
                                (slot * w * scale) + "px;max-width:none"});
    return el("div", {"class": "crop" + (pixelated ? " pixelated" : ""),
                      style: "width:" + (w * scale) + "px;height:" + (h * scale) + "px"}, [img]);
  }
  function sortHeader(label, key, sub, firstDesc) {
    // an IoU column sorts worst first, a change column most improved first; a second click reverses
    var active = state.sort === key;
    var th = el("th", {"data-sort": key, "class": "sortable" + (active ? " active" : ""), title: "sort by " + label,
                       onclick: function () {
                         if (state.sort === key) state.desc = !state.desc;
                         else { state.sort = key; state.desc = !!firstDesc; }
                         state.page = 0; render();
                       }},
                [el("div", {text: label + (active ? (state.desc ? " ▼" : " ▲") : "")}),
                 sub ? el("div", {"class": "sub", text: sub}) : null]);
    return th;
  }
  function renderHead() {
    var sp = split(), tr = el("tr");
    tr.appendChild(sortHeader("image", "id", "id · labels"));
    if (sp.gt) tr.appendChild(el("th", {}, [el("div", {text: "ground truth"})]));
    sp.columns.forEach(function (c, j) {
      var sub = c.title + (c.miou_here !== null && c.miou_here !== undefined ? " · mIoU " + pct(c.miou_here) : "");
      tr.appendChild(sortHeader(c.name, "col:" + j, sub));
    });
    sp.pairs.forEach(function (p, k) {
      tr.appendChild(sortHeader("Δ IoU", "pair:" + k, p[1] + " − " + p[0], true));
    });
    var head = document.querySelector("#rows thead");
    head.textContent = "";
    head.appendChild(tr);
  }
  function renderRow(sp, row) {
    var s = state.split, src = "t/" + s + "/" + row[ROW] + ".webp", h = row[THUMB][0], w = row[THUMB][1];
    var open = function () { location.hash = "#d=" + s + "/" + row[ROW]; };
    var tr = el("tr", {"data-id": row[ID], "data-row": String(row[ROW])});
    var labels = el("div", {"class": "labels"}, row[LABELS].map(swatch));
    tr.appendChild(el("td", {"class": "image"}, [el("a", {href: "#d=" + s + "/" + row[ROW], "class": "open"},
                                                  [crop(src, 0, thumbSlots(sp), w, h, 1, false)]),
                                                 el("div", {"class": "id", text: row[ID]}), labels]));
    if (sp.gt) tr.appendChild(el("td", {}, [row[HASGT] ? crop(src, 1, thumbSlots(sp), w, h, 1, true) : el("span", {text: "–"})]));
    sp.columns.forEach(function (c, j) {
      var cell = el("td", {onclick: open, "class": "stage"});
      if (row[PRESENT][j]) cell.appendChild(crop(src, slotOf(sp, j), thumbSlots(sp), w, h, 1, c.kind === "mask"));
      else cell.appendChild(el("div", {"class": "missing", text: "no file"}));
      cell.appendChild(el("div", {"class": "iou", "data-col": c.name, text: pct(row[MIOU][j])}));
      tr.appendChild(cell);
    });
    sp.pairs.forEach(function (p) {
      var d = delta(sp, row, p);
      var tone = d === null || signed(d) === "0.0" ? "" : d > 0 ? "up" : "down";
      tr.appendChild(el("td", {"class": "delta " + tone, text: signed(d)}));
    });
    return tr;
  }
  function render() {
    var sp = split(), shown = view(), pages = Math.max(1, Math.ceil(shown.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    renderHead();
    var body = document.querySelector("#rows tbody");
    body.textContent = "";
    shown.slice(state.page * state.size, (state.page + 1) * state.size).forEach(function (row) {
      body.appendChild(renderRow(sp, row));
    });
    var count = document.getElementById("count");
    count.textContent = shown.length + " of " + V.rows[state.split].length + " images";
    count.setAttribute("data-shown", String(shown.length));
    count.setAttribute("data-total", String(V.rows[state.split].length));
    document.getElementById("page-info").textContent = "page " + (state.page + 1) + " of " + pages;
    document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("next").disabled = state.page >= pages - 1;
    Array.prototype.forEach.call(document.querySelectorAll("#split-tabs button"), function (b, i) {
      b.className = i === state.split ? "active" : "";
    });
  }
  function setup() {
    var tabs = document.getElementById("split-tabs");
    M.splits.forEach(function (sp, i) {
      tabs.appendChild(el("button", {type: "button", "data-split": String(i), title: sp.root,
                                     text: sp.name + " (" + sp.n + ")",
                                     onclick: function () {
                                       state.split = i; state.sort = null; state.page = 0; render();
                                     }}));
    });
    var filter = document.getElementById("class-filter");
    M.classes.forEach(function (name, k) {
      if (k > 0) filter.appendChild(el("option", {value: String(k), text: name}));
    });
    filter.addEventListener("change", function () { state.cls = filter.value; state.page = 0; render(); });
    var size = document.getElementById("page-size");
    [25, 50, 100, 200, M.page_size].filter(function (v, i, all) { return all.indexOf(v) === i; })
      .sort(function (a, b) { return a - b; }).forEach(function (v) {
        size.appendChild(el("option", {value: String(v), text: String(v)}));
      });
    size.value = String(M.page_size);
    size.addEventListener("change", function () { state.size = +size.value; state.page = 0; render(); });
    document.getElementById("prev").addEventListener("click", function () { state.page--; render(); });
    document.getElementById("next").addEventListener("click", function () { state.page++; render(); });
    var legend = document.getElementById("legend");
    legend.appendChild(el("span", {"class": "title", text: "masks:"}));
    M.classes.forEach(function (name, k) { legend.appendChild(swatch(k)); });
    legend.appendChild(el("span", {"class": "title", text: "CAMs: 0"}));
    legend.appendChild(jetBar());
    legend.appendChild(el("span", {"class": "title", text: "1"}));
  }
  function jetBar() {
    var canvas = el("canvas", {width: "256", height: "1", "class": "jet"});
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(256, 1);
    for (var i = 0; i < 256; i++) {
      img.data[4 * i] = M.jet[i][0]; img.data[4 * i + 1] = M.jet[i][1];
      img.data[4 * i + 2] = M.jet[i][2]; img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }

  // ------------------------------------------------------------------ the detail view
  function decode(b64) {
    var text = atob(b64), out = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }
  function heat(grid, gh, gw, w, h) {
    // bilinear upsampling of a [gh, gw] map to [h, w] (half-pixel centres, as the CAM files' reader), coloured
    var canvas = el("canvas", {width: String(w), height: String(h), "class": "heat"});
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h), d = img.data;
    for (var y = 0; y < h; y++) {
      var fy = Math.min(Math.max((y + 0.5) * gh / h - 0.5, 0), gh - 1), y0 = Math.floor(fy),
          y1 = Math.min(y0 + 1, gh - 1), ty = fy - y0;
      for (var x = 0; x < w; x++) {
        var fx = Math.min(Math.max((x + 0.5) * gw / w - 0.5, 0), gw - 1), x0 = Math.floor(fx),
            x1 = Math.min(x0 + 1, gw - 1), tx = fx - x0;
        var v = (1 - ty) * ((1 - tx) * grid[y0 * gw + x0] + tx * grid[y0 * gw + x1]) +
                ty * ((1 - tx) * grid[y1 * gw + x0] + tx * grid[y1 * gw + x1]);
        var c = M.jet[Math.round(v)], o = 4 * (y * w + x);
        d[o] = c[0]; d[o + 1] = c[1]; d[o + 2] = c[2]; d[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }
  function boxCanvas(boxes, k, w, h) {
    // CAA's box mask for map k: the photo dimmed outside the union of its boxes, each box outlined
    var canvas = el("canvas", {width: String(w), height: String(h), "class": "boxes"});
    var ctx = canvas.getContext("2d"), sy = h / boxes.grid[0], sx = w / boxes.grid[1];
    ctx.fillStyle = "rgba(0,0,0,0.65)";
    ctx.fillRect(0, 0, w, h);
    var mine = boxes.rows.filter(function (b) { return b[0] === k; });
    mine.forEach(function (b) { ctx.clearRect(b[1] * sx, b[2] * sy, (b[3] - b[1]) * sx, (b[4] - b[2]) * sy); });
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
    mine.forEach(function (b) { ctx.strokeRect(b[1] * sx + 1, b[2] * sy + 1, (b[3] - b[1]) * sx - 2, (b[4] - b[2]) * sy - 2); });
    return canvas;
  }
  function figure(caption, body) {
    return el("figure", {}, [body, el("figcaption", {text: caption})]);
  }
  function detailScale(data) { return DETAIL_SIDE / Math.max(data.detail[0], data.detail[1]); }
  function photo(s, r, data) {
    var sc = detailScale(data);
    if (data.photo === "t") { // no larger than its thumbnail: slot 0 of the thumbnail strip
      return crop("t/" + s + "/" + r + ".webp", 0, thumbSlots(M.splits[s]), data.detail[1], data.detail[0], sc,
                  false, true);
    }
    return crop("d/" + s + "/" + r + ".webp", 0, 1, data.detail[1], data.detail[0], sc, false, true);
  }
  function boxNote(c) {
    if (c.boxes === "saved") return "CAA boxes (" + c.debug + ")";
    if (c.boxes === "off") return "no CAA (--refine none): no box mask";
    return "box mask not saved (cam --save-debug)";
  }
  function renderDetail(s, r, data) {
    var sp = M.splits[s], box = document.getElementById("detail"), sc = detailScale(data);
    var dw = data.detail[1], dh = data.detail[0], W = Math.round(dw * sc), H = Math.round(dh * sc);
    box.textContent = "";
    var close = el("button", {type: "button", "class": "close", title: "close (Esc)", text: "×",
                              onclick: function () { location.hash = ""; }});
    box.appendChild(el("div", {"class": "head"}, [close, el("h2", {text: data.id}),
      el("div", {"class": "labels"}, data.labels.map(swatch)),
      el("div", {"class": "sub", text: sp.name + " · " + data.size[0] + "×" + data.size[1] + " px"})]));
    // the photo and every mask, the same size
    var strip = "d/" + s + "/" + r + ".png", masks = [figure("image", photo(s, r, data))], slot = 0;
    if (sp.gt) {
      masks.push(figure("ground truth", data.gt ? crop(strip, slot, maskSlots(sp), dw, dh, sc, true, true) : el("div", {text: "–"})));
      slot++;
    }
    sp.columns.forEach(function (c, j) {
      if (c.kind !== "mask") return;
      var iou = data.iou[c.name] ? " · IoU " + pct(data.iou[c.name].miou) : "";
      masks.push(figure(c.name + " (" + c.title + ")" + iou,
                        data.present[j] ? crop(strip, slot, maskSlots(sp), dw, dh, sc, true, true) : el("div", {text: "no file"})));
      slot++;
    });
    box.appendChild(el("h3", {text: "image and masks"}));
    box.appendChild(el("div", {"class": "figures"}, masks));
    // one CAM per present class, every CAM folder side by side (text, vision, ...), and the box masks
    var cams = sp.columns.filter(function (c) { return data.cams[c.name]; });
    if (cams.length) {
      box.appendChild(el("h3", {text: "CAM per class"}));
      var classes = [];
      cams.forEach(function (c) {
        data.cams[c.name].labels.forEach(function (k) { if (classes.indexOf(k) < 0) classes.push(k); });
      });
      var grid = el("table", {"class": "cams"});
      var head = el("tr", {}, [el("th", {text: "class"})]);
      cams.forEach(function (c) {
        head.appendChild(el("th", {}, [el("div", {text: c.name}), el("div", {"class": "sub", text: c.title})]));
        if (c.boxes === "saved") head.appendChild(el("th", {}, [el("div", {text: "box mask"}),
                                                                 el("div", {"class": "sub", text: boxNote(c)})]));
      });
      grid.appendChild(head);
      classes.forEach(function (k) {
        var tr = el("tr", {}, [el("td", {}, [swatch(k)])]);
        cams.forEach(function (c) {
          var cam = data.cams[c.name], i = cam.labels.indexOf(k), iou = data.iou[c.name];
          var classIou = iou && iou.iou[String(k)] !== undefined ? "IoU " + pct(iou.iou[String(k)]) : "";
          if (i < 0) {
            tr.appendChild(el("td", {text: "not a label here"}));
          } else {
            var stack = el("div", {"class": "stack", style: "width:" + W + "px;height:" + H + "px"},
                           [photo(s, r, data), heat(decode(cam.maps[i]), cam.grid[0], cam.grid[1], W, H)]);
            tr.appendChild(el("td", {}, [stack, el("div", {"class": "sub", text: classIou})]));
          }
          if (c.boxes === "saved") {
            tr.appendChild(el("td", {}, i >= 0 && cam.boxes ? [el("div", {"class": "stack",
              style: "width:" + W + "px;height:" + H + "px"}, [photo(s, r, data), boxCanvas(cam.boxes, i, W, H)])]
              : [el("div", {text: "no boxes saved"})]));
          }
        });
        grid.appendChild(tr);
      });
      box.appendChild(el("div", {"class": "scroll"}, [grid]));
      var notes = cams.filter(function (c) { return c.boxes !== "saved"; }).map(function (c) {
        return c.name + ": " + boxNote(c);
      });
      if (notes.length) box.appendChild(el("p", {"class": "note", text: notes.join(" · ")}));
    }
    // per-class IoU at each stage
    var scored = sp.columns.filter(function (c) { return data.iou[c.name]; });
    if (scored.length) {
      box.appendChild(el("h3", {text: "IoU % per class"}));
      var t = el("table", {"class": "figures"});
      t.appendChild(el("tr", {}, [el("th", {text: "class"})].concat(scored.map(function (c) {
        return el("th", {"class": "num", text: c.name});
      }))));
      t.appendChild(el("tr", {}, [el("td", {}, [el("b", {text: "mIoU"})])].concat(scored.map(function (c) {
        return el("td", {"class": "num"}, [el("b", {text: pct(data.iou[c.name].miou)})]);
      }))));
      var present = [];
      scored.forEach(function (c) {
        Object.keys(data.iou[c.name].iou).forEach(function (k) { if (present.indexOf(+k) < 0) present.push(+k); });
      });
      present.sort(function (a, b) { return a - b; }).forEach(function (k) {
        t.appendChild(el("tr", {}, [el("td", {}, [swatch(k)])].concat(scored.map(function (c) {
          return el("td", {"class": "num", text: pct(data.iou[c.name].iou[String(k)])});
        }))));
      });
      box.appendChild(t);
    } else if (!data.gt) {
      box.appendChild(el("p", {"class": "note", text: "no ground truth for this image: no IoU"}));
    }
    box.hidden = false;
    box.setAttribute("data-id", data.id);
    document.body.classList.add("detail-open");
  }
  V.detailLoaded = function (s, r, data) {
    details[s + "/" + r] = data;
    if (location.hash === "#d=" + s + "/" + r) renderDetail(s, r, data);
  };
  function route() {
    var m = /^#d=(\d+)\/(\d+)$/.exec(location.hash), box = document.getElementById("detail");
    if (!m) {
      box.hidden = true; box.textContent = ""; box.removeAttribute("data-id");
      document.body.classList.remove("detail-open");
      return;
    }
    var s = +m[1], r = +m[2], key = s + "/" + r;
    if (details[key]) { renderDetail(s, r, details[key]); return; }
    var script = el("script", {src: "d/" + s + "/" + r + ".js"});
    script.addEventListener("error", function () {
      box.hidden = false; box.textContent = "";
      box.appendChild(el("p", {text: "d/" + key + ".js is missing: rebuild the report (vpltool report RUN)"}));
    });
    document.body.appendChild(script);
  }
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && location.hash) location.hash = "";
  });
  window.addEventListener("hashchange", route);
  setup();
  render();
  route();
  V.readyMs = performance.now(); // when the first page of rows was on screen (bench/bench_report.py reads it)
})();
