// The Switchboard release dashboard. It polls the coordinator's JSON API and renders what it
// gets; its buttons post to the same API that any client uses, so the coordinator's gate,
// policy and audit trail apply to them exactly as to sbctl.
//
// Every value shown comes from etcd or from users, so it is only ever put into the page as
// text (textContent, text nodes, SVG attributes), never parsed as markup.
"use strict";

(function () {
  const POLL_MS = 2000;
  const AUDIT_SHOWN = 20;
  const TOKEN_KEY = "switchboard-token";
  // A version in a slot takes the slot's colour, as the slots are drawn; others take the rest.
  const SLOT_COLOURS = { blue: "#2563eb", green: "#16a34a" };
  const PALETTE = ["#f59e0b", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#b91c1c", "#6b7280", "#92400e"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    // The token stays in this tab's session storage: it is gone when the tab closes.
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    ns: null,
    status: null,
    pending: null,
    timer: null,
    busy: false,
  };

  const $ = (id) => document.getElementById(id);

  // Builds an element whose children are elements or text; strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function setText(id, text) {
    $(id).textContent = text === null || text === undefined ? "" : String(text);
  }

  function time(ms) {
    if (!ms) return "";
    return new Date(ms).toLocaleString(undefined, { hour12: false });
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString(undefined, { hour12: false });
  }

  function ago(ms) {
    const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    return seconds < 120 ? seconds + " s ago" : Math.round(seconds / 60) + " min ago";
  }

  function short(hash) {
    return hash ? String(hash).slice(0, 12) : "";
  }

  function percentText(weightBp) {
    return (weightBp / 100).toString() + "%";
  }

  // An error from the API carries the HTTP status, so that 401 and 403 can be told apart.
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const message = data && typeof data.error === "string" ? data.error : response.statusText;
      throw new ApiError(response.status, message);
    }
    return data;
  }

  const nsPath = (ns) => "/v1/ns/" + encodeURIComponent(ns);

  function chosenNamespace() {
    const match = /^#ns=(.+)$/.exec(location.hash);
    if (!match) return null;
    try {
      return decodeURIComponent(match[1]);
    } catch (_) {
      return null;
    }
  }

  function renderNamespaces(namespaces) {
    const nav = $("namespaces");
    nav.replaceChildren(
      ...namespaces.map((ns) =>
        el("a", { href: "#ns=" + encodeURIComponent(ns), class: ns === state.ns ? "current" : null, "data-ns": ns }, ns),
      ),
    );
  }

  function slotLine(sv) {
    return sv ? sv.slot + " · " + sv.version : "none";
  }

  function slotRole(status, slot) {
    if (status.active && status.active.slot === slot) return "active";
    if (status.canary && status.canary.slot === slot && status.canary.weight_bp > 0) return "canary";
    const record = status.slots[slot];
    if (!record) return "empty";
    if (record.state !== "sealed") return "staging";
    if (status.previous && status.previous.slot === slot && status.previous.version === record.version) return "previous";
    return "staged";
  }

  function renderSlot(status, slot) {
    const record = status.slots[slot];
    const role = slotRole(status, slot);
    const title = el("h3", {}, slot, el("span", { class: "badge " + role, "data-role": role }, role));
    const box = $("slot-" + slot);
    if (!record) {
      box.replaceChildren(title, el("p", { class: "version" }, "nothing staged"));
      return;
    }
    const facts = el(
      "dl",
      {},
      el("dt", {}, "Version"), el("dd", { class: "version mono" }, record.version),
      el("dt", {}, "State"), el("dd", { class: "state" }, record.state),
      el("dt", {}, "Items"), el("dd", {}, record.item_count + " (" + record.bytes + " bytes)"),
      el("dt", {}, "Checksum"), el("dd", { class: "checksum mono", title: record.checksum }, short(record.checksum)),
      el("dt", {}, "Staged by"), el("dd", {}, record.staged_by + ", " + time(record.at_ms)),
      el("dt", {}, "Message"), el("dd", { class: "message" }, record.message),
    );
    box.replaceChildren(title, facts);
  }

  function renderStatus(status) {
    setText("ns-name", status.namespace);
    setText("epoch", status.epoch);
    setText("active", slotLine(status.active));
    const canary = status.canary;
    setText("canary", canary && canary.weight_bp > 0 ? canary.slot + " · " + canary.version + " · " + percentText(canary.weight_bp) : "none");
    $("canary-fill").style.width = (canary ? canary.weight_bp / 100 : 0) + "%";
    setText("previous", slotLine(status.previous));
    setText("bake", status.bake_until_ms ? time(status.bake_until_ms) : "not baking");
    const change = status.last_change;
    setText("last-change", change ? change.action + " by " + change.by + (change.reason ? ": " + change.reason : "") + " at " + time(change.at_ms) : "none");
    setText("leader", status.leader || "none elected");
    renderSlot(status, "blue");
    renderSlot(status, "green");
    renderRollout(status);
    renderSidecars(status);
    const input = $("canary-percent");
    if (document.activeElement !== input && input.value === "") {
      input.placeholder = canary ? percentText(canary.weight_bp) : "0-100";
    }
  }

  function renderRollout(status) {
    const rollout = status.rollout;
    const steps = $("rollout-steps");
    if (!rollout) {
      setText("rollout-state", "No rollout. `sbctl rollout NS --steps 1,5,25,100 --interval S` starts one.");
      steps.replaceChildren();
      return;
    }
    setText(
      "rollout-state",
      rollout.state + ": " + rollout.slot + " · " + rollout.version + ", a step every " + rollout.interval_seconds +
        " s, started by " + rollout.started_by + " at " + time(rollout.started_at_ms) + (rollout.note ? ". " + rollout.note : ""),
    );
    steps.replaceChildren(
      ...rollout.steps_bp.map((bp, index) =>
        el("li", { class: index < rollout.step ? "done" : index === rollout.step ? "current" : null }, percentText(bp)),
      ),
    );
  }

  function renderSidecars(status) {
    const rows = status.sidecars.map((sidecar) => {
      const converged = sidecar.epoch === status.epoch && !sidecar.drift;
      const serving = sidecar.serving.map((s) => s.slot + " " + s.version + " (" + short(s.checksum) + ")").join(", ");
      return el(
        "tr",
        { "data-sidecar": sidecar.id },
        el("td", { class: "mono" }, sidecar.id),
        el("td", { class: "epoch" }, sidecar.epoch),
        el("td", { class: "serving mono" }, serving || "nothing yet"),
        el("td", { class: "converged" }, converged ? "yes" : "no", sidecar.drift ? el("span", { class: "badge bad" }, "DRIFT: " + sidecar.drift) : null),
        el("td", {}, sidecar.etcd_reachable ? "reachable" : "unreachable"),
        el("td", {}, ago(sidecar.at_ms)),
      );
    });
    $("sidecars").tBodies[0].replaceChildren(...rows);
    const on = status.sidecars.filter((s) => s.epoch === status.epoch && !s.drift).length;
    const versions = {};
    for (const sidecar of status.sidecars) {
      for (const served of sidecar.serving) versions[served.version] = (versions[served.version] || 0) + 1;
    }
    const byVersion = Object.entries(versions).map(([version, count]) => version + " on " + count).join("; ");
    setText(
      "convergence-summary",
      status.sidecars.length === 0
        ? "No live sidecar."
        : on + " of " + status.sidecars.length + " sidecars serve epoch " + status.epoch + (byVersion ? ". Versions: " + byVersion : ""),
    );
  }

  function renderAudit(trail) {
    const records = trail.records.slice().reverse();
    $("audit-table").tBodies[0].replaceChildren(
      ...records.map((record) => {
        let detail = JSON.stringify(record.detail);
        if (detail && detail.length > 240) detail = detail.slice(0, 240) + "…";
        return el(
          "tr",
          { "data-seq": record.seq, "data-action": record.action },
          el("td", {}, record.seq),
          el("td", {}, time(record.at_ms)),
          el("td", { class: "actor" }, record.actor),
          el("td", { class: "action" }, record.action),
          el("td", { class: "reason" }, record.reason),
          el("td", { class: "detail mono" }, detail === "null" ? "" : detail),
        );
      }),
    );
    const verified = trail.verified;
    setText(
      "audit-verified",
      !verified ? "" : verified.intact ? "Hash chain verified: intact." : "Hash chain BROKEN at #" + verified.first_bad_seq + ": " + verified.problem,
    );
    $("audit-verified").className = verified && !verified.intact ? "error" : "";
  }

  // The chart: one line per version, error rate (errors / outcomes) per sampling interval,
  // with the policy's maximum as a dashed line.
  function renderChart(series, status) {
    const chart = $("chart");
    const legend = $("chart-legend");
    const width = 760, height = 240, left = 48, right = 12, top = 12, bottom = 28;
    const root = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": "error rate per version" });
    const versions = series.versions.filter((v) => v.points.length > 0);
    const all = versions.flatMap((v) => v.points);
    const limit = status && status.policy ? status.policy.max_error_rate : null;
    if (all.length === 0) {
      root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "No outcomes reported yet."));
      chart.replaceChildren(root);
      legend.replaceChildren();
      return;
    }
    const rate = (p) => (p.ok + p.errors > 0 ? p.errors / (p.ok + p.errors) : 0);
    // From the first point to now, and at least a minute, so that a few points do not
    // stretch across the whole width.
    const t1 = Math.max(Date.now(), ...all.map((p) => p.at_ms));
    const t0 = Math.min(...all.map((p) => p.at_ms), t1 - 60 * 1000);
    const yMax = Math.max(0.01, ...all.map(rate), limit ? limit * 1.25 : 0);
    const x = (t) => left + ((t - t0) / Math.max(1, t1 - t0)) * (width - left - right);
    const y = (r) => top + (1 - r / yMax) * (height - top - bottom);
    for (let i = 0; i <= 4; i++) {
      const r = (yMax * i) / 4;
      root.append(svg("line", { x1: left, x2: width - right, y1: y(r), y2: y(r), class: "grid" }));
      root.append(svg("text", { x: left - 4, y: y(r) + 3, "text-anchor": "end" }, (r * 100).toFixed(r * 100 < 10 ? 1 : 0) + "%"));
    }
    for (let i = 0; i <= 4; i++) {
      const t = t0 + ((t1 - t0) * i) / 4;
      root.append(svg("text", { x: x(t), y: height - 8, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, clock(t)));
    }
    root.append(svg("line", { x1: left, x2: left, y1: top, y2: height - bottom, class: "axis" }));
    root.append(svg("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }));
    if (limit) {
      root.append(svg("line", { x1: left, x2: width - right, y1: y(limit), y2: y(limit), class: "limit" }));
      root.append(svg("text", { x: width - right, y: y(limit) - 3, "text-anchor": "end" }, "max " + (limit * 100).toFixed(1) + "%"));
    }
    const gap = 3 * series.interval_ms;
    const items = [];
    const slotOf = (name) => ["blue", "green"].find((slot) => status && status.slots[slot] && status.slots[slot].version === name);
    let others = 0;
    versions.forEach((version) => {
      const slot = slotOf(version.version);
      const colour = slot ? SLOT_COLOURS[slot] : PALETTE[others++ % PALETTE.length];
      const group = svg("g", { "data-version": version.version });
      // A gap of several intervals without outcomes breaks the line instead of bridging it.
      let segment = [];
      const flush = () => {
        if (segment.length > 1) group.append(svg("polyline", { points: segment.join(" "), stroke: colour, class: "series" }));
        segment = [];
      };
      let previous = null;
      for (const point of version.points) {
        if (previous && point.at_ms - previous.at_ms > gap) flush();
        segment.push(x(point.at_ms).toFixed(1) + "," + y(rate(point)).toFixed(1));
        previous = point;
      }
      flush();
      for (const point of version.points) {
        const dot = svg("circle", { cx: x(point.at_ms).toFixed(1), cy: y(rate(point)).toFixed(1), r: 2.5, fill: colour, class: "point" });
        dot.append(svg("title", {}, version.version + ": " + (rate(point) * 100).toFixed(2) + "% (" + point.errors + " errors of " + (point.ok + point.errors) + ") at " + clock(point.at_ms)));
        group.append(dot);
      }
      root.append(group);
      const last = version.points[version.points.length - 1];
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colour;
      const name = (slot ? slot + " · " : "") + version.version;
      items.push(el("li", { "data-version": version.version }, swatch, name + ": " + (rate(last) * 100).toFixed(2) + "% in the last interval"));
    });
    chart.replaceChildren(root);
    legend.replaceChildren(...items);
  }

  function showConnection(text, isError) {
    const line = $("connection");
    line.textContent = text;
    line.className = isError ? "error" : "";
  }

  async function refresh() {
    if (state.busy) return;
    state.busy = true;
    try {
      const list = await api("GET", "/v1/ns");
      $("auth-needed").hidden = true;
      const namespaces = list.namespaces || [];
      state.ns = chosenNamespace();
      if (!state.ns || !namespaces.includes(state.ns)) state.ns = namespaces[0] || null;
      renderNamespaces(namespaces);
      $("no-namespaces").hidden = namespaces.length > 0;
      if (!state.ns) {
        $("view").hidden = true;
        showConnection("Updated " + clock(Date.now()), false);
        return;
      }
      const ns = state.ns;
      const [status, trail, series] = await Promise.all([
        api("GET", nsPath(ns) + "/status"),
        api("GET", nsPath(ns) + "/audit?limit=" + AUDIT_SHOWN),
        api("GET", nsPath(ns) + "/errors"),
      ]);
      if (ns !== state.ns) return;
      state.status = status;
      renderStatus(status);
      renderAudit(trail);
      renderChart(series, status);
      $("view").hidden = false;
      showConnection("Updated " + clock(Date.now()) + " · polling every " + POLL_MS / 1000 + " s", false);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        $("auth-needed").hidden = false;
        $("view").hidden = true;
        showConnection(state.token ? "401: that token is not known to this coordinator." : "401: a token is needed.", true);
      } else {
        showConnection("Cannot read the coordinator: " + (error.status ? error.status + ": " : "") + error.message, true);
      }
    } finally {
      state.busy = false;
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(async () => {
      await refresh();
      schedule();
    }, POLL_MS);
  }

  function renderTokenState() {
    setText("token-state", state.token ? "token in use" : "no token");
  }

  // A change is armed first and sent on Confirm: the confirmation names what will happen and
  // the epoch it was decided on, which the request carries so that a change made meanwhile
  // by someone else makes it a conflict (409) instead of being applied blindly.
  function arm(kind) {
    const status = state.status;
    if (!status) return;
    const idle = status.active ? (status.active.slot === "blue" ? "green" : "blue") : null;
    const staged = idle ? status.slots[idle] : null;
    const reason = $("reason").value.trim();
    let body, text;
    if (kind === "canary") {
      const raw = $("canary-percent").value.trim().replace(/%$/, "");
      if (!/^\d{1,3}(\.\d{1,2})?$/.test(raw) || Number(raw) > 100) {
        showResult("Canary %: give a number from 0 to 100 with at most two decimals, like 10 or 12.5.", true);
        return;
      }
      body = { percent: Number(raw), expected_epoch: status.epoch, reason };
      if (staged) body.expected_version = staged.version;
      text = "Set the canary of " + status.namespace + " to " + raw + "%" + (staged ? " (" + idle + " · " + staged.version + ")" : "");
    } else if (kind === "flip") {
      body = { expected_epoch: status.epoch, reason };
      if (staged) body.expected_version = staged.version;
      text = "Flip everyone in " + status.namespace + " to " + (staged ? idle + " · " + staged.version : "the staged slot");
    } else {
      body = { expected_epoch: status.epoch, reason };
      text = status.canary && status.canary.weight_bp > 0
        ? "End the canary of " + status.namespace + " (everyone back to " + slotLine(status.active) + ")"
        : "Roll " + status.namespace + " back to " + slotLine(status.previous);
    }
    state.pending = { kind, ns: status.namespace, body };
    setText("confirm-text", text + ", decided on epoch " + status.epoch + "?");
    $("confirm").hidden = false;
  }

  function showResult(text, isError) {
    const result = $("result");
    result.textContent = text;
    result.className = isError ? "error" : "ok";
  }

  async function confirm() {
    const pending = state.pending;
    state.pending = null;
    $("confirm").hidden = true;
    if (!pending) return;
    try {
      const change = await api("POST", nsPath(pending.ns) + "/" + pending.kind, pending.body);
      showResult(pending.kind + " done: epoch " + change.routing.epoch + ", audit record #" + change.audit_seq + ".", false);
    } catch (error) {
      showResult(pending.kind + " refused: " + (error.status ? error.status + " " : "") + error.message, true);
    }
    await refresh();
  }

  function start() {
    renderTokenState();
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.token = $("token").value.trim();
      $("token").value = "";
      if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
      else sessionStorage.removeItem(TOKEN_KEY);
      renderTokenState();
      refresh();
    });
    $("token-forget").addEventListener("click", () => {
      state.token = "";
      sessionStorage.removeItem(TOKEN_KEY);
      renderTokenState();
      refresh();
    });
    $("change-form").addEventListener("submit", (event) => event.preventDefault());
    $("do-canary").addEventListener("click", () => arm("canary"));
    $("do-flip").addEventListener("click", () => arm("flip"));
    $("do-rollback").addEventListener("click", () => arm("rollback"));
    $("confirm-yes").addEventListener("click", confirm);
    $("confirm-no").addEventListener("click", () => {
      state.pending = null;
      $("confirm").hidden = true;
    });
    window.addEventListener("hashchange", refresh);
    refresh().then(schedule);
  }

  start();
})();
