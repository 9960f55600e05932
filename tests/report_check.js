// Self-check run inside the cohort report by tests/test_report_browser.py: drives the
// page as a person would (picture kinds, sorting, filters) and writes what it saw as
// JSON into a pre element with id selfcheck.
(async function () {
  "use strict";
  var out = { ready: document.documentElement.getAttribute("data-report") };
  var sleep = function (ms) { return new Promise(function (r) { setTimeout(r, ms); }); };
  var all = function (sel) { return Array.from(document.querySelectorAll(sel)); };
  function column(key) {
    var i = all("#table th[data-key]").findIndex(function (th) { return th.dataset.key === key; });
    return all("#table tbody tr").map(function (tr) { return tr.cells[i].textContent; });
  }
  function set(id, value, event) {
    var el = document.getElementById(id);
    el.value = value;
    el.dispatchEvent(new Event(event));
  }
  function click(key) { document.querySelector('#table th[data-key="' + key + '"]').click(); }
  async function images() {
    // Poll with timers: headless Chromium's virtual time runs them, and waits for the
    // image loads, whereas a decode() promise is not waited for.
    var imgs = Array.from(document.images);
    var done = function () { return imgs.every(function (img) { return img.complete; }); };
    for (var i = 0; i < 200 && !done(); i++) await sleep(20);
    return imgs.map(function (img) {
      return { alt: img.alt, width: img.naturalWidth, height: img.naturalHeight,
               ok: img.complete && img.naturalWidth > 0 };
    });
  }
  try {
    out.initial = column("sample");
    out.cards = all("#gallery .card").map(function (c) { return c.id; });
    out.groups = all("#table th.group").map(function (th) { return th.textContent; });
    out.failedTable = (document.getElementById("failed") || {}).textContent || "";
    out.plots = all("#plots svg").map(function (svg) { return svg.getBoundingClientRect().width; });
    out.images = {};
    var kinds = all("#picture option").map(function (o) { return o.value; });
    for (var k = 0; k < kinds.length; k++) {
      set("picture", kinds[k], "change");
      await sleep(10);
      out.images[kinds[k]] = await images();
    }
    set("picture", "mask", "change");
    click("sample"); out.sortedAsc = column("sample");
    click("sample"); out.sortedDesc = column("sample");
    click("objects"); out.byObjects = column("sample"); out.objects = column("objects");
    out.query = out.initial[out.initial.length - 1];
    set("filter", out.query.toUpperCase(), "input");
    out.filtered = column("sample");
    out.filteredCards = all("#gallery .card").length;
    set("filter", "", "input");
    set("status", "failed", "change"); out.failedOnly = column("sample");
    set("status", "", "change");
    set("flag", "any", "change"); out.flagged = column("sample");
    set("flag", "", "change");
    set("filter", "zzz-no-such-slide", "input");
    out.none = column("sample");
    out.pageinfo = document.getElementById("pageinfo").textContent;
    set("filter", "", "input");
  } catch (e) {
    out.error = String((e && e.stack) || e);
  }
  var pre = document.createElement("pre");
  pre.id = "selfcheck";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
