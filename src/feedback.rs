//! Feedback that never reveals hidden tests (issue #18): nbgrader's feedback HTML is made from
//! the autograded notebook, which carries the hidden test regions `ClearHiddenTests` removed
//! from the student version, and their tracebacks (nbgrader#917). `src/feedback_redact.py`
//! removes them; it is the code nbgrader runs, from the block `isolate-grade install` writes
//! into `nbgrader_config.py` (its preprocessor goes first in `GenerateFeedback.preprocessors`,
//! so the formgrader's "Generate feedback" button and `nbgrader generate_feedback` redact).

/// The redaction nbgrader runs (the config block).
pub const REDACT_PY: &str = include_str!("feedback_redact.py");

/// The part of the config block that makes GenerateFeedback redact, failing closed: if it can't
/// be set up, GenerateFeedback is given a preprocessor that does not exist, so no feedback at
/// all is written rather than one with the hidden tests in it.
pub fn config_block() -> String {
    format!(
        r#"# Feedback without the hidden tests: GenerateFeedback (the formgrader's button, `nbgrader
# generate_feedback`) removes the hidden test regions and every trace of them from the feedback.
# What a failed test's error shows: c.RedactHiddenTests.errors = "full" | "message" | "none".
{redact}

try:
    _isolate_grade_feedback(c)
except Exception as e:  # fail closed: no feedback at all, rather than one that shows the hidden tests
    import sys
    print(f"isolate-grade: the feedback redaction could not be set up ({{e!r}}): no feedback will be generated", file=sys.stderr)
    c.GenerateFeedback.preprocessors = ["isolate_grade_could_not_set_up_the_feedback_redaction_see_nbgrader_config_py"]
"#,
        redact = REDACT_PY.trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_calls_the_redaction_and_fails_closed() {
        let b = config_block();
        assert!(b.contains("def _isolate_grade_feedback(c"));
        assert!(b.contains("\ntry:\n    _isolate_grade_feedback(c)\nexcept Exception as e:"));
        assert!(b.contains("c.GenerateFeedback.preprocessors = [\"isolate_grade_could_not"));
        // traitlets compiles config files with `from __future__ import annotations`
        assert!(!REDACT_PY.contains("@dataclass") && !REDACT_PY.contains("import dataclasses"));
    }
}
