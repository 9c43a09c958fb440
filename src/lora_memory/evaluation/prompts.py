r"""The in-context prompt: the document followed by the question.

It is the in-context baseline of every evaluation, benchmark and the demo, and
the prompt of the Doc-to-LoRA teacher, so student and baseline see the same text.

Example:
    >>> in_context_prompt("The launch moved to March 14.", "When is the launch?")
    'The launch moved to March 14.\n\nWhen is the launch?'
"""

from __future__ import annotations


def in_context_prompt(document: str, question: str) -> str:
    """The prompt that gives the model ``document`` in context before ``question``."""
    return f"{document}\n\n{question}"
