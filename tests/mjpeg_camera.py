"""A real MJPEG-over-HTTP network camera on loopback, for tests of a stream that goes away."""
from __future__ import annotations

import http.server
import socketserver
import threading
import time

import cv2
import numpy as np


class MjpegCamera:
    """Serves ``frames`` JPEG frames of ``size`` (h, w), one per ``interval`` s; ``streamed`` is set once all are sent.

    ``stop()`` shuts the server down: a client still reading sees its camera lost.
    """

    def __init__(self, frames: int, size: tuple[int, int], interval: float, path: str = "/stream.mjpg"):
        self.streamed = threading.Event()
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's naming)
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for i in range(frames):
                    _, jpeg = cv2.imencode(".jpg", np.full((*size, 3), (i * 5) % 256, np.uint8))
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                     + jpeg.tobytes() + b"\r\n")
                    time.sleep(interval)
                camera.streamed.set()

            def log_message(self, *args):
                pass

        self._server = socketserver.TCPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
