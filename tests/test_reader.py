"""Reading a tap's pipe: the same lines as reading a file, and a call while the pipe is silent."""

from __future__ import annotations

import io
import os
import random
import threading
import time

import pytest

from target_cbx1.reader import pipe_lines

TEXTS = [
    b"",
    b"\n",
    b"a\nb\n",
    b"no newline at the end",
    b"\n\n\nthree empty lines first\n",
    b'{"type": "RECORD", "record": {"x": "\\r is not an end of line"}}\r\n',
    b"x" * 200_000 + b"\n" + b"y" * 70_000,  # lines longer than one read
]


@pytest.mark.parametrize("text", TEXTS)
def test_a_pipe_gives_the_same_lines_as_a_file_however_it_is_written(text):
    draw = random.Random(len(text))
    read_fd, write_fd = os.pipe()

    def write_in_pieces() -> None:
        position = 0
        while position < len(text):
            size = draw.randint(1, 100_000)
            os.write(write_fd, text[position : position + size])
            position += size
        os.close(write_fd)

    writer = threading.Thread(target=write_in_pieces)
    writer.start()
    try:
        assert list(pipe_lines(read_fd, lambda: None)) == list(io.BytesIO(text))
    finally:
        writer.join()
        os.close(read_fd)


def test_idle_runs_while_the_pipe_is_silent_and_the_lines_still_come():
    read_fd, write_fd = os.pipe()
    calls: list[float] = []
    os.write(write_fd, b"first\n")

    def write_later() -> None:
        time.sleep(0.35)
        os.write(write_fd, b"second\n")
        os.close(write_fd)

    writer = threading.Thread(target=write_later)
    writer.start()
    try:
        lines = list(pipe_lines(read_fd, lambda: calls.append(time.monotonic()), idle_seconds=0.1))
    finally:
        writer.join()
        os.close(read_fd)
    assert lines == [b"first\n", b"second\n"]
    assert 2 <= len(calls) <= 4
