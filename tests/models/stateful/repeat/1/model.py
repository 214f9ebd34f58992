"""Decoupled: answers one request with one response per element of IN.

Each request is answered from a thread of its own, so requests overlap. A
request the client cancels stops early; with REPEAT_CANCEL_DIR set, the
model leaves a file named after the request's id there when that happens.
"""

import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []
        self.cancel_dir = os.environ.get("REPEAT_CANCEL_DIR", "")

    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            delay_ms = int(pb_utils.get_input_tensor_by_name(request, "DELAY_MS").as_numpy()[0])
            thread = threading.Thread(
                target=self.answer,
                args=(request.get_response_sender(), request.request_id(), values, delay_ms),
                daemon=True,
            )
            thread.start()
            self.threads.append(thread)
        self.threads = [t for t in self.threads if t.is_alive()]
        return None

    def answer(self, sender, request_id, values, delay_ms):
        for index, value in enumerate(values.tolist()):
            time.sleep(delay_ms / 1000)
            if sender.is_cancelled():
                if self.cancel_dir:
                    with open(os.path.join(self.cancel_dir, f"cancelled-{request_id}"), "w"):
                        pass
                break
            outputs = [
                pb_utils.Tensor("OUT", np.array([value], dtype=np.int32)),
                pb_utils.Tensor("IDX", np.array([index], dtype=np.uint32)),
            ]
            sender.send(pb_utils.InferenceResponse(outputs))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join(timeout=5)
