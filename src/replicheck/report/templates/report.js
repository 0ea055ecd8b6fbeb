(function () {
  "use strict";
  var root = document.documentElement;
  var errors = [];
  window.addEventListener("error", function (event) {
    errors.push(String(event.message));
    root.setAttribute("data-js-errors", errors.join(" | "));
  });

  function formatted(value, type) {
    if (value === null || value === undefined) return "—";
    if (type === "number") return Math.abs(value) >= 1e-3 || value === 0 ? String(+value.toPrecision(4)) : value.toExponential(2);
    return String(value);
  }

  function flaggedTable() {
    var table = document.getElementById("flagged-table");
    if (!table) return;
    var data = JSON.parse(document.getElementById("flagged-data").textContent);
    Object.keys(data.dictionaries).forEach(function (key) {  // repeated texts are sent once; rows hold indices
      var column = +key, values = data.dictionaries[key];
      data.rows.forEach(function (row) { row[column] = values[row[column]]; });
    });
    var headRow = table.tHead.rows[0], body = table.tBodies[0];
    var filter = document.getElementById("flagged-filter"), info = document.getElementById("flagged-info");
    var previous = document.getElementById("flagged-previous"), next = document.getElementById("flagged-next");
    var PAGE = 100, page = 0, sortColumn = -1, direction = 1, view = data.rows.slice();

    data.columns.forEach(function (name, column) {
      var cell = document.createElement("th");
      cell.textContent = name;
      cell.title = "sort by " + name;
      if (data.types[column] === "number") cell.className = "num";
      cell.addEventListener("click", function () {
        direction = sortColumn === column ? -direction : 1;
        sortColumn = column;
        Array.prototype.forEach.call(headRow.cells, function (other) { other.classList.remove("sorted-asc", "sorted-desc"); });
        cell.classList.add(direction > 0 ? "sorted-asc" : "sorted-desc");
        apply();
      });
      headRow.appendChild(cell);
    });

    function compare(a, b) {
      var x = a[sortColumn], y = b[sortColumn];
      if (x === null) return y === null ? 0 : 1;  // missing values last, either direction
      if (y === null) return -1;
      if (data.types[sortColumn] === "number") return direction * (x - y);
      return direction * String(x).localeCompare(String(y), undefined, {numeric: true});
    }

    function apply() {
      var query = filter.value.trim().toLowerCase();
      view = !query ? data.rows.slice() : data.rows.filter(function (row) {
        return row.some(function (value, column) {
          return data.types[column] === "text" && String(value).toLowerCase().indexOf(query) >= 0;
        });
      });
      if (sortColumn >= 0) view.sort(compare);
      page = 0;
      draw();
    }

    function draw() {
      var pages = Math.max(1, Math.ceil(view.length / PAGE));
      var fragment = document.createDocumentFragment();
      view.slice(page * PAGE, (page + 1) * PAGE).forEach(function (row) {
        var line = document.createElement("tr");
        row.forEach(function (value, column) {
          var cell = document.createElement("td");
          cell.textContent = formatted(value, data.types[column]);
          if (data.types[column] === "number") cell.className = "num";
          line.appendChild(cell);
        });
        fragment.appendChild(line);
      });
      body.textContent = "";
      body.appendChild(fragment);
      info.textContent = view.length + " of " + data.rows.length + " flagged images" +
        (view.length > PAGE ? ", page " + (page + 1) + " of " + pages : "");
      previous.disabled = page === 0;
      next.disabled = page >= pages - 1;
    }

    filter.addEventListener("input", apply);
    previous.addEventListener("click", function () { page -= 1; draw(); });
    next.addEventListener("click", function () { page += 1; draw(); });
    draw();
  }

  function sliceSliders() {
    Array.prototype.forEach.call(document.querySelectorAll("input.slice-slider"), function (input) {
      var card = input.closest(".pair");
      var strips = card.querySelectorAll(".strip");
      var label = card.querySelector(".slice-label");  // the slider row's heading
      var positions = JSON.parse(input.getAttribute("data-positions"));
      var axis = input.getAttribute("data-axis") || "z";
      function show() {
        var i = +input.value, share = positions.length > 1 ? 100 * i / (positions.length - 1) : 0;
        Array.prototype.forEach.call(strips, function (strip) { strip.style.backgroundPosition = "0 " + share + "%"; });
        label.textContent = axis + " = " + positions[i];
      }
      input.addEventListener("input", show);
      show();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    flaggedTable();
    sliceSliders();
    root.setAttribute("data-ready", "1");
    root.setAttribute("data-ready-ms", String(Math.round(performance.now())));
  });
  window.addEventListener("load", function () {
    // For automated checks: how many pictures decoded (a broken data URI has no natural width).
    var pictures = document.querySelectorAll("img");
    var decoded = Array.prototype.filter.call(pictures, function (img) { return img.complete && img.naturalWidth > 0; });
    root.setAttribute("data-images", pictures.length + " " + decoded.length);
    root.setAttribute("data-load-ms", String(Math.round(performance.now())));
  });
})();
