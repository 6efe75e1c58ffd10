// The labeler workspace: keyboard shortcuts, the ranking board (drag-and-drop and keys), the
// lease countdown and the shortcut help. Everything else is plain forms swapped by htmx.
// Event handlers are delegated from `document`, so content swapped in by htmx needs no re-binding.
(function () {
  "use strict";

  const $ = (selector, root) => (root || document).querySelector(selector);
  const $$ = (selector, root) => Array.from((root || document).querySelectorAll(selector));

  function announce(text) {
    const region = $("#announce");
    if (region) region.textContent = text;
  }

  function isTyping(el) {
    return !!el && el.matches(
      "textarea, select, [contenteditable], input:not([type=radio]):not([type=checkbox]):not([type=button]):not([type=submit])"
    );
  }

  // --- Lease countdown -------------------------------------------------------------------
  function tick() {
    $$(".countdown[data-expires]").forEach((el) => {
      const left = Math.round((Date.parse(el.dataset.expires) - Date.now()) / 1000);
      const lease = el.closest(".lease");
      if (left <= 0) {
        el.textContent = "0:00 (expired)";
        if (lease) lease.classList.add("expired");
        return;
      }
      const minutes = Math.floor(left / 60);
      const seconds = String(left % 60).padStart(2, "0");
      el.textContent = minutes + ":" + seconds;
      if (lease) lease.classList.toggle("warn", left < 60);
    });
  }
  setInterval(tick, 1000);

  // --- Ranking board ---------------------------------------------------------------------
  function boardOf(card) {
    return card.closest("[data-rank-board]");
  }

  function rankOf(card) {
    return $("[data-rank-select]", card).value;
  }

  function place(card, rank, keepFocus) {
    const board = boardOf(card);
    const k = Number(board.dataset.k);
    if (rank !== "" && (Number(rank) < 1 || Number(rank) > k)) return;
    $("[data-rank-select]", card).value = String(rank);
    const slot = $('.rank-slot[data-rank="' + rank + '"] .slot-items', board);
    slot.appendChild(card);
    if (keepFocus) card.focus();
    const number = card.dataset.number;
    if (rank === "") {
      announce("Response " + number + " is not ranked.");
      return;
    }
    const tied = $$(".rankable", slot).filter((c) => c !== card).map((c) => c.dataset.number);
    announce(
      "Response " + number + " placed at rank " + rank +
        (tied.length ? ", tied with response " + tied.join(" and ") : "") + "."
    );
  }

  function initBoards(root) {
    $$("[data-rank-board]", root).forEach((board) => {
      if (board.dataset.ready) return;
      board.dataset.ready = "1";
      $$(".rankable", board).forEach((card) => {
        const rank = rankOf(card);
        if (rank) place(card, rank, false);
      });
      announce("");
    });
  }

  document.addEventListener("change", (event) => {
    const select = event.target.closest("[data-rank-select]");
    if (select) place(select.closest(".rankable"), select.value, false);
  });

  document.addEventListener("dragstart", (event) => {
    const card = event.target.closest && event.target.closest(".rankable");
    if (!card) return;
    event.dataTransfer.setData("text/plain", card.dataset.response);
    event.dataTransfer.effectAllowed = "move";
    card.classList.add("dragging");
  });
  document.addEventListener("dragend", (event) => {
    const card = event.target.closest && event.target.closest(".rankable");
    if (card) card.classList.remove("dragging");
    $$(".rank-slot.over").forEach((s) => s.classList.remove("over"));
  });
  document.addEventListener("dragover", (event) => {
    const slot = event.target.closest && event.target.closest(".rank-slot");
    if (!slot) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "move";
    $$(".rank-slot.over").forEach((s) => s !== slot && s.classList.remove("over"));
    slot.classList.add("over");
  });
  document.addEventListener("drop", (event) => {
    const slot = event.target.closest && event.target.closest(".rank-slot");
    if (!slot) return;
    event.preventDefault();
    slot.classList.remove("over");
    const id = event.dataTransfer.getData("text/plain");
    const card = $('.rankable[data-response="' + CSS.escape(id) + '"]', boardOf(slot));
    if (card) place(card, slot.dataset.rank, true);
  });

  function rankKeys(event, card) {
    const k = Number(boardOf(card).dataset.k);
    const current = rankOf(card) === "" ? 0 : Number(rankOf(card));
    if (/^[1-9]$/.test(event.key) && Number(event.key) <= k) {
      place(card, event.key, true);
      // Placing by number moves on to the next response still to place, so a labeler can
      // rank a whole list with digits alone; arrows keep focus on the response they move.
      const next = $(".pool .rankable", boardOf(card));
      if (next) next.focus();
    } else if (event.key === "0" || event.key === "Delete" || event.key === "Backspace") {
      place(card, "", true);
    } else if (event.key === "ArrowUp") {
      if (current > 1) place(card, String(current - 1), true);
    } else if (event.key === "ArrowDown") {
      place(card, String(Math.min(k, current + 1)), true);
    } else {
      return false;
    }
    event.preventDefault();
    return true;
  }

  // --- Keyboard shortcuts ----------------------------------------------------------------
  function check(selector) {
    const input = $(selector);
    if (input) {
      input.checked = true;
      input.dispatchEvent(new Event("change", { bubbles: true }));
      announce((input.closest("label") || input).textContent.trim() + " selected.");
    }
  }

  function toggleHelp() {
    const help = $("#help");
    if (!help) return;
    if (help.open) help.close();
    else help.showModal();
  }

  document.addEventListener("click", (event) => {
    if (event.target.closest("[data-help-open]")) toggleHelp();
    const add = event.target.closest("[data-add-turn]");
    if (add) addTurn(add.closest(".turns"));
  });

  // Ctrl+Enter submits from inside the task form, and from anywhere outside a form that is not
  // a text field: each new task puts the focus on its heading, and a labeler who answers with
  // a / b / t or the digits never enters the form. The skip form and the draft stay out of it.
  function submitsTask(form, target) {
    return form.contains(target) || (!target.closest("form") && !isTyping(target));
  }

  // A task htmx has swapped in but not yet settled (processed: its hx-post is read then) would
  // be posted by the browser itself, leaving the page; a Ctrl+Enter that quick waits for it.
  function submitWhenSettled(form) {
    if (form.closest(".htmx-added")) setTimeout(() => submitWhenSettled(form), 10);
    else if (form.isConnected) form.requestSubmit();
  }

  document.addEventListener("keydown", (event) => {
    const form = $("#task-form");
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && form && submitsTask(form, event.target)) {
      event.preventDefault();
      submitWhenSettled(form);
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || isTyping(event.target)) return;
    if (event.key === "?") {
      event.preventDefault();
      toggleHelp();
      return;
    }
    if ($("#help") && $("#help").open) return;
    const card = event.target.closest && event.target.closest(".rankable");
    if (card && rankKeys(event, card)) return;
    if (event.key === "g" && $("#guidelines")) {
      $("#guidelines").open = !$("#guidelines").open;
      return;
    }
    const task = $("#task");
    if (!task) return;
    if (task.dataset.kind === "compare") {
      const choice = { a: "a", b: "b", t: "tie", x: "both_bad" }[event.key];
      if (choice) check('input[name=choice][value="' + choice + '"]');
      if (/^[1-3]$/.test(event.key)) check('input[name=strength][value="' + event.key + '"]');
      // "Write a better one": both are bad, and the focus goes to the answer to write.
      if (event.key === "w" && $("#better")) {
        event.preventDefault();
        check('input[name=choice][value="both_bad"]');
        $("#better").focus();
      }
    } else if (task.dataset.kind === "arena") {
      const choice = { a: "a", b: "b", t: "tie", x: "both_bad" }[event.key];
      if (choice) check('input[name=choice][value="' + choice + '"]');
    } else if (task.dataset.kind === "rate" && /^[1-7]$/.test(event.key)) {
      check('input[name=score][value="' + event.key + '"]');
    }
  });

  // --- Multi-turn prompts ----------------------------------------------------------------
  function addTurn(fieldset) {
    const list = $("[data-turns]", fieldset);
    const n = $$(".turn-row", list).length + 1;
    const html = $("#turn-template", fieldset).innerHTML.replaceAll("__n__", String(n));
    list.insertAdjacentHTML("beforeend", html);
    const roles = $$("select[name=turn_role]", list);
    const previous = roles.length > 1 ? roles[roles.length - 2].value : "assistant";
    roles[roles.length - 1].value = previous === "user" ? "assistant" : "user";
    $("#turn-content-" + n, list).focus();
  }

  // --- htmx: once a new task has settled, move focus to its heading -----------------------
  // Not at afterSwap: htmx processes the new form's hx-post only when it settles, and keys
  // that reach it before would submit it as a plain form.
  document.addEventListener("htmx:afterSettle", (event) => {
    if (event.detail.target.id !== "main") return;
    const heading = $("#main h1[tabindex]") || $("#main");
    heading.focus({ preventScroll: true });
  });
  document.addEventListener("htmx:load", (event) => {
    initBoards(event.detail.elt);
    tick();
  });
  document.addEventListener("DOMContentLoaded", () => {
    initBoards(document);
    tick();
  });
})();
