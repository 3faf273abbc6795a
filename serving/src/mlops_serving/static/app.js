// Upload page: drag and drop onto the file field, and a canvas to draw a digit
// with a mouse or a finger. A drawing is sent as a PNG data URL in `drawing`.
(function () {
  "use strict";
  const form = document.getElementById("predict-form");
  if (!form) return;
  const fileInput = document.getElementById("file");
  const dropZone = document.getElementById("drop-zone");
  const canvas = document.getElementById("canvas");
  const drawing = document.getElementById("drawing");
  const ctx = canvas.getContext("2d");
  let drawn = false;

  function resetCanvas() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 18;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    drawn = false;
  }
  resetCanvas();

  ["dragenter", "dragover"].forEach((type) =>
    dropZone.addEventListener(type, (event) => { event.preventDefault(); dropZone.classList.add("over"); }));
  ["dragleave", "drop"].forEach((type) =>
    dropZone.addEventListener(type, () => dropZone.classList.remove("over")));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) {
      fileInput.files = event.dataTransfer.files;
      form.requestSubmit();
    }
  });
  fileInput.addEventListener("change", () => { if (fileInput.files.length) form.requestSubmit(); });

  function point(event) {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (canvas.width / box.width),
            (event.clientY - box.top) * (canvas.height / box.height)];
  }
  let active = false;
  canvas.addEventListener("pointerdown", (event) => {
    active = true;
    canvas.setPointerCapture(event.pointerId);
    const [x, y] = point(event);
    ctx.beginPath();
    ctx.moveTo(x, y);
    ctx.lineTo(x + 0.1, y + 0.1);
    ctx.stroke();
    drawn = true;
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!active) return;
    const [x, y] = point(event);
    ctx.lineTo(x, y);
    ctx.stroke();
  });
  ["pointerup", "pointercancel"].forEach((type) => canvas.addEventListener(type, () => { active = false; }));
  document.getElementById("clear").addEventListener("click", resetCanvas);

  form.addEventListener("submit", () => {
    if (!fileInput.files.length && drawn) drawing.value = canvas.toDataURL("image/png");
  });
})();
