() => {
  // The page script for picking things (app/main.py runs it with the app's own): the Explore maps
  // (hover image, click to select, hover linked across two aligned maps, box or lasso into the working set)
  // and the Search cards' related / not related marks. The server hears a pick through a hidden textbox that
  // this script fills with JSON and a counter (so picking the same thing twice is still a change) and listens
  // to with .change: Gradio reports "input" on key presses only.
  let sent = 0;
  const send = (elemId, payload) => {
    const box = document.querySelector(`#${elemId} textarea, #${elemId} input`);
    if (!box) return false;
    sent += 1;
    box.value = JSON.stringify(Object.assign({}, payload, { n: sent }));
    box.dispatchEvent(new Event('input', { bubbles: true }));
    return true;
  };

  // ---------------------------------------------------------------------------------- Explore maps
  // A point's customdata is [note id, image URL] (app/tabs/explore.py). Scattergl events do not always carry
  // customdata, so it is read from the full data by trace and point number.
  const pointData = (gd, point) => {
    if (!point) return { id: null, image: '' };
    let data = point.customdata;
    if (data === undefined && gd && gd._fullData && gd._fullData[point.curveNumber]) {
      const custom = gd._fullData[point.curveNumber].customdata;
      const index = point.pointNumber !== undefined ? point.pointNumber : point.pointIndex;
      data = custom ? custom[index] : undefined;
    }
    if (Array.isArray(data)) return { id: data[0] == null ? null : String(data[0]), image: data[1] || '' };
    return { id: data == null ? null : String(data), image: '' };
  };
  const floating = (id, className) => {
    let box = document.getElementById(id);
    if (!box) {
      box = document.createElement('div');
      box.id = id;
      box.className = className;
      if (id === 'explore-hover-thumb') box.appendChild(document.createElement('img'));
      document.body.appendChild(box);
    }
    return box;
  };
  // Where each note is in each map: subplot ('x', 'x2') -> id -> [trace, point]; rebuilt when the figure is.
  const pointIndex = (gd) => {
    if (gd.__wbIndex && gd.__wbIndex.data === gd._fullData) return gd.__wbIndex.maps;
    const maps = {};
    (gd._fullData || []).forEach((trace, t) => {
      const custom = trace.customdata;
      if (!custom || !custom.length) return;
      const map = maps[trace.xaxis || 'x'] || (maps[trace.xaxis || 'x'] = new Map());
      for (let i = 0; i < custom.length; i += 1) {
        const id = Array.isArray(custom[i]) ? custom[i][0] : custom[i];
        if (id != null && !map.has(String(id))) map.set(String(id), [t, i]);
      }
    });
    gd.__wbIndex = { data: gd._fullData, maps };
    return maps;
  };
  const axis = (gd, name, letter) => gd._fullLayout[letter + 'axis' + (name.length > 1 ? name.slice(1) : '')];
  // Linked brushing: the note under the cursor in one map gets a ring in the other, drawn as a page element
  // over the canvas (no Plotly redraw, so it follows the mouse at once).
  const showTwin = (gd, event) => {
    const ring = floating('explore-twin', 'wb-twin-ring');
    ring.style.display = 'none';
    const point = event && event.points && event.points[0];
    const { id } = pointData(gd, point);
    if (!id || !gd._fullLayout) return;
    const here = (point.fullData && point.fullData.xaxis) || (point.data && point.data.xaxis) || 'x';
    const maps = pointIndex(gd);
    Object.keys(maps).filter((key) => key !== here).forEach((key) => {
      const found = maps[key].get(id);
      if (!found) return;
      const trace = gd._fullData[found[0]];
      const xa = axis(gd, trace.xaxis || 'x', 'x'), ya = axis(gd, trace.yaxis || 'y', 'y');
      const px = xa._offset + xa.l2p(trace.x[found[1]]), py = ya._offset + ya.l2p(trace.y[found[1]]);
      if (px < xa._offset || px > xa._offset + xa._length || py < ya._offset || py > ya._offset + ya._length) return;
      const box = gd.getBoundingClientRect();
      ring.style.left = (box.left + px) + 'px';
      ring.style.top = (box.top + py) + 'px';
      ring.dataset.noteId = id;
      ring.style.display = 'block';
    });
  };
  const hideHover = () => {
    floating('explore-hover-thumb', 'wb-hover-thumb').style.display = 'none';
    floating('explore-twin', 'wb-twin-ring').style.display = 'none';
  };
  const MAX_SELECTED = 50000;  // the server's cap per request (core/data/working_set.py)
  const hook = () => {
    document.querySelectorAll('#explore-map .js-plotly-plot').forEach((gd) => {
      if (gd.__wbHooked || !gd.on) return;
      gd.__wbHooked = true;
      gd.on('plotly_click', (event) => {
        const { id } = pointData(gd, event && event.points && event.points[0]);
        if (id) send('explore-click', { id });
      });
      gd.on('plotly_hover', (event) => {
        showTwin(gd, event);
        const { image } = pointData(gd, event && event.points && event.points[0]);
        const box = floating('explore-hover-thumb', 'wb-hover-thumb');
        if (!image) { box.style.display = 'none'; return; }
        const img = box.querySelector('img');
        if (img.getAttribute('src') !== image) img.setAttribute('src', image);
        // Above-left of the cursor: plotly puts its hover label to the right of the point.
        const mouse = event.event || {};
        box.style.left = Math.max(4, (mouse.clientX || 0) - 154) + 'px';
        box.style.top = Math.max(4, (mouse.clientY || 0) - 154) + 'px';
        box.style.display = 'block';
      });
      gd.on('plotly_unhover', hideHover);
      // A box or lasso: its notes (once each; the highlight traces carry no ids) join the working set.
      gd.on('plotly_selected', (event) => {
        if (!event || !event.points || !event.points.length) return;
        const ids = [...new Set(event.points.map((p) => pointData(gd, p).id).filter((id) => id))];
        if (ids.length) send('explore-selection', { ids: ids.slice(0, MAX_SELECTED) });
      });
    });
  };
  new MutationObserver(hook).observe(document.body, { childList: true, subtree: true });
  hook();

  // ---------------------------------------------------------------------------------- Search marks
  // A card's "related" / "not related" toggles: the mark flips at once on the page, and the server keeps it.
  // Caught before the card's own click (which searches from the card's note) and stopped there.
  const markButton = (event) => event.target && event.target.closest
    && event.target.closest('#search-results .wb-pair-marks .wb-pair-mark');
  document.addEventListener('click', (event) => {
    const button = markButton(event);
    if (!button) return;
    event.preventDefault();
    event.stopPropagation();
    const marks = button.closest('.wb-pair-marks');
    const next = marks.dataset.mark === button.dataset.mark ? '' : button.dataset.mark;
    marks.dataset.mark = next;
    send('search-mark', { query: marks.dataset.queryId, note: marks.dataset.noteId, mark: next || null });
  }, true);
  document.addEventListener('keydown', (event) => {
    // Enter or space on a mark presses the mark (the browser clicks it), not the card around it.
    if ((event.key === 'Enter' || event.key === ' ') && markButton(event)) event.stopPropagation();
  }, true);
}
