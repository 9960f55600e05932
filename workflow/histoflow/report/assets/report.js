// The cohort report's gallery and table, drawn from the JSON blocks of the page one
// page of slides at a time, so that a page of hundreds of slides opens fast.
(function () {
  "use strict";
  var byId = function (id) { return document.getElementById(id); };
  var json = function (id) { var el = byId(id); return el ? JSON.parse(el.textContent) : null; };
  var data = json("report-data");
  var images = json("report-images") || [];
  var times = json("report-times") || { columns: [], cells: [] };
  var columns = data.columns.concat(times.columns);
  var slides = data.slides.map(function (s, i) {
    s.order = i;
    s.values = s.cells.concat(times.cells[i] || times.columns.map(function () { return null; }));
    s.text = [s.sample, s.status, s.slide || "", s.error || ""]
      .concat(s.flags.map(function (f) { return data.flagTitles[f.id] + " " + f.detail; }))
      .join(" ").toLowerCase();
    return s;
  });
  var index = {};
  columns.forEach(function (c, i) { index[c.key] = i; });
  var state = { query: "", status: "", flag: "", sort: null, dir: 1, page: 0, picture: "mask" };

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function format(value, column) {
    if (value === null || value === undefined) return "";
    if (typeof value === "number" && column.digits !== null) return value.toFixed(column.digits);
    return String(value);
  }

  function compare(a, b) {
    var x = a.values[index[state.sort]], y = b.values[index[state.sort]];
    var nx = x === null || x === undefined || x === "", ny = y === null || y === undefined || y === "";
    if (nx || ny) return nx === ny ? a.order - b.order : (nx ? 1 : -1);  // empty cells last
    var c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return c === 0 ? a.order - b.order : c * state.dir;
  }

  function matches(s) {
    if (state.status && s.status !== state.status) return false;
    if (state.flag === "any" && !s.flags.length) return false;
    if (state.flag && state.flag !== "any" && !s.flags.some(function (f) { return f.id === state.flag; })) return false;
    return !state.query || s.text.indexOf(state.query) >= 0;
  }

  function view() {
    var shown = slides.filter(matches);
    if (state.sort) shown.sort(compare);
    return shown;
  }

  function flagBadges(s) {
    return s.flags.map(function (f) {
      return el("span", { "class": "flag", title: f.detail }, [data.flagTitles[f.id]]);
    });
  }

  function card(s) {
    // The chosen kind where the slide has it, else its mask outline.
    var kind = s.pics[state.picture] !== undefined ? state.picture : "mask";
    var pic = s.pics[kind];
    var picture = pic === undefined ? el("div", { "class": "nopic" }, ["no picture"])
      : el("img", { src: images[pic], alt: s.sample + " " + kind });
    var v = function (key) { return s.values[index[key]]; };
    var facts = [];
    if (v("tissue_area_mm2") !== null) facts.push("tissue " + format(v("tissue_area_mm2"), { digits: 2 }) + " mm²");
    if (v("objects") !== null) facts.push(v("objects") + " objects");
    if (v("objects_per_mm2") !== null) facts.push(format(v("objects_per_mm2"), { digits: 1 }) + "/mm²");
    var perClass = data.classes.map(function (label, i) {
      var n = v("n" + i), d = v("d" + i);
      return n === null ? null : el("li", {}, [label + ": " + n + (d === null ? "" : " (" + d.toFixed(1) + "/mm²)")]);
    }).filter(Boolean);
    var links = s.links.map(function (l) { return el("li", {}, [el("a", { href: l[1] }, [l[0]])]); });
    return el("div", { "class": "card " + s.status, id: "card-" + s.sample }, [
      picture,
      el("div", { "class": "name" }, [s.sample + " ", el("span", { "class": "badge " + s.status }, [s.status])]),
      el("div", {}, flagBadges(s)),
      el("div", { "class": "muted" }, [facts.join(" · ")]),
      el("ul", {}, perClass),
      s.error ? el("div", { "class": "error" }, [s.error]) : "",
      el("details", {}, [el("summary", {}, ["files (" + s.links.length + ")"]), el("ul", {}, links)])
    ]);
  }

  function row(s) {
    var tr = el("tr", { "class": s.status });
    columns.forEach(function (c, i) {
      var td = el("td", { "class": c.digits === null ? "text" : "num" });
      if (c.key === "sample") td.appendChild(el("a", { href: "#card-" + s.sample }, [s.sample]));
      else if (c.key === "flags") flagBadges(s).forEach(function (b) { td.appendChild(b); });
      else td.textContent = format(s.values[i], c);
      tr.appendChild(td);
    });
    return tr;
  }

  function header() {
    var groups = el("tr"), names = el("tr");
    columns.forEach(function (c, i) {
      if (i === 0 || columns[i - 1].group !== c.group) {
        var span = columns.filter(function (d) { return d.group === c.group; }).length;
        groups.appendChild(el("th", { "class": "group", colspan: String(span) }, [c.group]));
      }
      var cls = state.sort === c.key ? (state.dir > 0 ? "asc" : "desc") : "";
      var th = el("th", { "data-key": c.key, "class": cls, title: c.title || c.label }, [c.label]);
      th.addEventListener("click", function () {
        state.dir = state.sort === c.key ? -state.dir : 1;
        state.sort = c.key;
        state.page = 0;
        render();
      });
      names.appendChild(th);
    });
    return el("thead", {}, [groups, names]);
  }

  function render() {
    var shown = view();
    var pages = Math.max(1, Math.ceil(shown.length / data.pageSize));
    state.page = Math.min(state.page, pages - 1);
    var slice = shown.slice(state.page * data.pageSize, (state.page + 1) * data.pageSize);
    var gallery = byId("gallery");
    gallery.textContent = "";
    slice.forEach(function (s) { gallery.appendChild(card(s)); });
    var table = byId("table");
    table.textContent = "";
    table.appendChild(header());
    table.appendChild(el("tbody", {}, slice.map(row)));
    byId("pageinfo").textContent = "page " + (state.page + 1) + " of " + pages + " · " +
      shown.length + " of " + slides.length + " slides";
    byId("prev").disabled = state.page === 0;
    byId("next").disabled = state.page >= pages - 1;
  }

  function on(id, event, update) {
    byId(id).addEventListener(event, function (e) { update(e.target.value); state.page = 0; render(); });
  }
  on("filter", "input", function (v) { state.query = v.trim().toLowerCase(); });
  on("status", "change", function (v) { state.status = v; });
  on("flag", "change", function (v) { state.flag = v; });
  on("picture", "change", function (v) { state.picture = v; });
  byId("prev").addEventListener("click", function () { state.page -= 1; render(); });
  byId("next").addEventListener("click", function () { state.page += 1; render(); });
  render();
  document.documentElement.setAttribute("data-report", "ready");
})();
