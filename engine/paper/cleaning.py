"""Paper-mode code cleaning: what the reference does to a completion or an answer before running it.

- `clean_completion`: generate_code_for_alpaca.py:30-47 (the same in generate_code_for_mbpp.py:41-57):
  keep the target function from its `def` line and cut at the first line that starts at column 0
  with a letter, `#` or `"` (so trailing top-level code, tests or prints are dropped).
- `clean_completion_humaneval`: generate_code_for_humaneval.py:35-67 (a looser header match, a
  fallback on the bare name, never an error).
- `truncate_code`: eval_alpaca.py:227-254 (= eval_mbpp.py, applied by `eval` before every run): the
  code after `RECTIFIED CODE`, the first fenced block, or else only indented/def/import lines.
- `parse_teacher_output`: create_alpaca_finetuning_data_from_chatgpt_refinements.py:59-91 (the last
  fenced block; the student's code where the answer holds no code at all).
- `remove_header`: the same file, :102-107 (cut at the first `:`; what training completions are).
- `split_at_def_line`: the layout the released refine records have instead (docs/fidelity.md).
"""
from __future__ import annotations

import re

EOS = "<|endoftext|>"
_EOF = re.compile(r'\n[A-Za-z#"]+?')


def strip_eos(text: str) -> str:
    """Text up to the first end-of-text token (the reference decodes with special tokens kept)."""
    i = text.find(EOS)
    return text[:i] if i >= 0 else text


def attempt_code(prompt: str, text: str, cleanup: bool = False) -> str:
    """The code of one student attempt (generate_code_for_alpaca.py:86-87, :454-457): the decoded text is
    prompt + continuation up to the end token (with `cleanup`, transformers 4.29.2's decode clean-up over
    both), then `get_clean_completion`'s code where it is not blank, else the whole text."""
    full = prompt + strip_eos(text)
    if cleanup:
        from persd.runtime.decoding import clean_up_tokenization

        full = clean_up_tokenization(full)
    clean = clean_completion(full, prompt)
    return clean if clean.strip() else full


def _cut_at_top_level(code: str) -> str:
    m = _EOF.search(code)
    return code[: m.start() + 1] if m is not None else code


def clean_completion(completion: str, prompt: str) -> str:
    """The reference's `get_clean_completion` for Code-Alpaca and MBPP. `completion` is the decoded
    text, which starts with the prompt (pass `prompt + continuation` for a server's continuation)."""
    if completion.startswith(prompt):
        completion = completion[len(prompt):]
    tail = prompt.split('"""')[-1]
    head = tail.split("def ")[0]
    parts = tail.split("def ")
    if len(parts) < 2:  # the reference would stop with an IndexError here; keep the text
        return completion
    func_sig = "def " + parts[1]
    if func_sig.strip() not in completion:
        completion = func_sig + "\n" + completion
    last = prompt.strip("\n").split("\n")[-1]
    at = last.find("def ")
    if at < 0:
        return completion
    fn_name = last[at:].split(" ")[1].split("(")[0]
    m = re.search(rf"def [ ]*{fn_name}[ ]*\(.*\)[ ]*:", completion)
    if m is None:
        return completion
    completion = _cut_at_top_level(completion[m.start():])
    return head + "\n" + completion.strip()


def clean_completion_humaneval(completion: str, prompt: str, fn_name: str | None = None) -> str:
    """The reference's `get_clean_completion` for HumanEval (the entry point is given)."""
    if completion.startswith(prompt):
        completion = completion[len(prompt):]
    tail = prompt.split('"""')[-1]
    head = tail.split("def ")[0]
    parts = tail.split("def ")
    if len(parts) > 1:
        func_sig = "def " + parts[1]
        if func_sig.strip() not in completion:
            completion = func_sig + "\n" + completion
    if not fn_name:
        last = prompt.strip("\n").split("\n")[-1]
        at = last.find("def ")
        if at >= 0:
            fn_name = last[at:].split(" ")[1].split("(")[0]
    if fn_name:
        m = re.search(rf"def [ ]*{fn_name}[ ]*\(.*\).*:", completion) or re.search(rf"def [ ]*{fn_name}", completion)
        if m is not None:
            completion = _cut_at_top_level(completion[m.start():])
    return head + "\n" + completion.strip()


def truncate_code(completion: str) -> str:
    """The code `eval` runs: after the last `REFINEMENT:`/`RECTIFIED CODE` marker, the first fenced
    block, else only the lines that are indented or start a def/import/from."""
    for marker, alt in (("REFINEMENT:", "Refinement:\n"), ("RECTIFIED CODE", "RECTIFIED CODE\n")):
        if marker in completion or alt in completion:
            found = marker if marker in completion else alt
            completion = completion[completion.rfind(found) + len(found):]
    if "```python" in completion:
        return completion.split("```")[1][len("python"):]
    if "```" in completion:
        return completion.split("```")[1]
    return "\n".join(line for line in completion.split("\n") if _code_line(line))


def _code_line(line: str) -> bool:
    s = line.strip()
    return line.startswith((" ", "\t")) or s.startswith(("def ", "import ", "from "))


def parse_teacher_output(answer: str, student_code: str) -> tuple[str, str]:
    """(feedback, code) from the teacher's answer: the text after the last `RECTIFIED CODE`, then the
    last fenced block; with no fence, its code-looking lines, or the student's code if there are none."""
    feedback = ""
    marker = "RECTIFIED CODE"
    if marker in answer:
        cut = answer.rfind(marker)
        feedback = answer[:cut].strip("\n")
        if "FEEDBACK" in feedback:
            word = "FEEDBACK:" if "FEEDBACK:" in feedback else "FEEDBACK"
            feedback = feedback[feedback.rfind(word) + len(word):].strip("\n")
        answer = answer[cut + len(marker):].strip("\n")
    if "```python" in answer:
        code = answer.split("```")[answer.count("```") - 1]
        return feedback, code[len("python"):] if code.startswith("python") else code
    if "```" in answer:
        return feedback, answer.split("```")[answer.count("```") - 1]
    lines = [line for line in answer.split("\n") if _code_line(line)]
    if len(lines) <= 1 and student_code:
        return feedback, student_code
    return feedback, "\n".join(lines)


_DEF_LINE = re.compile(r"def .*:")


def split_at_def_line(code: str) -> tuple[str, str]:
    """(before, body): the text before the code's first `def` line, and what follows that line's newline.
    The layout of the released refine records (models/CCG_ALP/finetuning_data_gold_rectification_nochatgpt.jsonl:
    all 3,243 gold bodies), which the release's code (`remove_header_from_code`, cut at the first `:`) does
    not produce. No def line: ("", code)."""
    m = _DEF_LINE.search(code)
    if m is None:
        return "", code
    nl = code.find("\n", m.end())
    return code[: m.start()], (code[nl + 1:] if nl >= 0 else "")


def remove_header(code: str) -> tuple[str, str]:
    """(body, signature): the code after its first `:`, and everything up to it. A training
    completion is the body; it follows a prompt that ends with the header and a newline."""
    func_sig = code.split(":")[0] + ":"
    return code[len(func_sig):], func_sig
