"""%load_ext nbpool, %%pmap and %pool in a real kernel."""

from __future__ import annotations

import pytest
from kernel_util import kernel, run_cell

pytestmark = pytest.mark.kernel


def _result(msgs: list[dict]) -> str:
    return "".join(
        m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "execute_result"
    )


def _error(kc, code: str) -> dict:
    """The failed cell's error (ename, evalue, traceback) plus everything it wrote to stderr."""
    msgs: list[dict] = []
    reply = kc.execute_interactive(code, timeout=60, output_hook=msgs.append)
    assert reply["content"]["status"] == "error", code
    err = dict(reply["content"])
    err["stderr"] = "".join(
        m["content"]["text"]
        for m in msgs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
    )
    shown = [m["content"] for m in msgs if m["msg_type"] == "error"]
    err["traceback"] = shown[0]["traceback"] if shown else err.get("traceback", [])
    return err


def test_pmap_and_pool_magics(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, "%load_ext nbpool")
        out, _ = run_cell(kc, "%pool status")
        assert "not started" in out
        # the body reads notebook names (shipped by value); its assignments stay local
        run_cell(kc, "OFFSET = 100\ndef helper(v):\n    return v * 2\ny = 'untouched'")
        _, msgs = run_cell(kc, "%%pmap x in range(5)\ny = helper(x)\ny + OFFSET")
        assert _result(msgs) == "[100, 102, 104, 106, 108]"
        out, _ = run_cell(kc, "print(y)")
        assert out.strip() == "untouched"
        # tuple targets, -o, --chunksize, --unordered, -n on first start of the pool
        run_cell(kc, "%%pmap -o sums --chunksize 2 a, b in [(1, 2), (3, 4), (5, 6)]\na + b")
        out, _ = run_cell(kc, "print(sums)")
        assert out.strip() == "[3, 7, 11]"
        _, msgs = run_cell(kc, "%%pmap --unordered x in [3, 1, 2]\nx * 10")
        assert sorted(eval(_result(msgs))) == [10, 20, 30]
        # --reduce: the cell's values folded in the workers (map_reduce)
        run_cell(kc, "import operator")
        _, msgs = run_cell(kc, "%%pmap --reduce operator.add x in range(100)\nx * x")
        assert _result(msgs) == str(sum(x * x for x in range(100)))
        run_cell(kc, "%%pmap -o longest --reduce max w in ['a', 'abc', 'ab']\nlen(w)")
        out, _ = run_cell(kc, "print(longest)")
        assert out.strip() == "3"
        out, _ = run_cell(kc, "%pool status")
        assert "workers on this machine, pids" in out
        # an error shows the item and the remote traceback, and loses no other result
        err = _error(kc, "%%pmap z in range(4)\nif z == 2:\n    raise ValueError(f'bad {z}')\nz")
        assert err["ename"] == "ValueError" and "bad 2" in err["evalue"]
        assert "item 2" in "\n".join(err["traceback"])
        out, _ = run_cell(kc, "print(_pmap[:2], type(_pmap[2]).__name__, _pmap[3])")
        assert out.strip() == "[0, 1] ValueError 3"
        # bad input: a one-line usage error, no traceback into nbpool
        for bad in (
            "%%pmap x range(3)\nx",
            "%%pmap x in undefined_name\nx",
            "%%pmap --bogus x in [1]\nx",
            "%%pmap --reduce no_such_fn x in [1]\nx",
        ):
            err = _error(kc, bad)
            assert err["ename"] == "UsageError", bad
            assert "nbpool/" not in "\n".join(err["traceback"])
        out, _ = run_cell(kc, "%pool restart -n 1")
        assert "1 workers" in out
        out, _ = run_cell(kc, "%pool stop")
        assert out.strip() == "stopped"
        err = _error(kc, "%pool frobnicate")
        assert err["ename"] == "UsageError"


def test_pool_size_options_are_applied_or_refused(tmp_path):
    """-n used to be ignored silently once the session pool existed, and -n 0 was accepted."""
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, "%load_ext nbpool\nimport nbpool._notebook.magic as m")
        out, _ = run_cell(kc, "%pool start -n 2")
        assert "2 workers" in out
        out, _ = run_cell(kc, "%pool start -n 1")
        assert "restarting the session pool with 1 worker (it had 2)" in out
        out, _ = run_cell(kc, "print(m._SESSION['pool']._processes)")
        assert out.strip() == "1"
        out, msgs = run_cell(kc, "%%pmap -n 2 x in range(4)\nx")
        assert "restarting the session pool with 2 workers (it had 1)" in out
        assert _result(msgs) == "[0, 1, 2, 3]"
        out, _ = run_cell(kc, "%pool start -n 2")  # the same size: kept as it is
        assert "restarting" not in out
        for bad in ("%pool start -n 0", "%pool restart -n -3", "%pool start -n two"):
            err = _error(kc, bad)
            assert err["ename"] == "UsageError", bad
        err = _error(kc, "%%pmap -n 0 x in [1]\nx")
        assert err["ename"] == "UsageError" and "at least 1" in err["evalue"]
        run_cell(kc, "%pool stop")


def test_pmap_bodies_take_ipython_syntax_and_show_their_lines(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, "%load_ext nbpool\n%pool start -n 2")
        out, msgs = run_cell(
            kc, "%%pmap x in ['a', 'b']\n!echo shell {x}\ngot = !echo got {x}\n%time y = 1\ngot[0]"
        )
        assert _result(msgs) == "['got a', 'got b']"
        assert "] shell a" in out and "] shell b" in out and "Wall time" in out
        # a syntax error names the line of the cell
        err = _error(kc, "%%pmap x in [1]\ny = 1\nx +\n")
        assert err["ename"] == "UsageError" and "line 3 of the cell ('x +')" in err["evalue"]
        # a failing item's remote traceback shows the cell and the line as typed
        err = _error(kc, "%%pmap x in [1]\ny = x\nraise ValueError(f'bad {y}')")
        tb = "\n".join(err["traceback"])
        assert "Cell In[" in tb and ", line 3, in pmap_cell" in tb
        assert "raise ValueError(f'bad {y}')" in tb
        # assigning a notebook name in the body: the scoping rule is explained
        run_cell(kc, "OFFSET = 10")
        err = _error(kc, "%%pmap x in range(2)\nOFFSET = OFFSET + x\nOFFSET")
        assert err["ename"] == "UnboundLocalError"
        assert "every name you assign is local to the item" in "\n".join(err["traceback"])
        run_cell(kc, "%pool stop")
