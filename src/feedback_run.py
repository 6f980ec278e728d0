
# isolate-grade's src/feedback_run.py, run after src/feedback_redact.py (`isolate-grade
# feedback`): nbgrader's GenerateFeedback for each student named in the JSON of argv[1]
# ({"assignment", "students", "errors", "force"}), in the course directory (the cwd), with the
# redaction first; one JSON line per student on stdout: {"student", "ok", "error", "notebooks":
# {name: {"summary": counts} or {"refused": why}}, "up_to_date"}. A student's feedback is
# skipped (unless force) when this wrote it, with the same errors mode, after the autograded
# notebooks changed: the stamp `.isolate-grade-feedback` beside it says so (release_feedback
# releases the .html files only). Any other feedback there (nbgrader's own, maybe with the
# hidden tests in it) is written again: a second run resumes, and never keeps a leak.
def _isolate_grade_feedback_run():
    import json
    import os
    import sys

    from nbgrader.apps import GenerateFeedbackApp

    job = json.loads(sys.argv[1])
    for student in job["students"]:
        notebooks = {}
        src = os.path.join("autograded", student, job["assignment"])
        stamp = os.path.join("feedback", student, job["assignment"], ".isolate-grade-feedback")
        try:
            newest = max(os.stat(os.path.join(d, f)).st_mtime for d, _, fs in os.walk(src) for f in fs)
            with open(stamp) as f:
                fresh = f.read() == job["errors"] and os.stat(stamp).st_mtime >= newest
        except (OSError, ValueError):
            fresh = False
        if fresh and not job["force"]:
            print(json.dumps({"student": student, "ok": True, "error": None, "notebooks": {}, "up_to_date": True}),
                  flush=True)
            continue
        if os.path.exists(stamp):
            os.remove(stamp)

        def record(st, nb, summary, refusal):
            notebooks[str(nb)] = {"summary": summary} if refusal is None else {"refused": refusal}

        app = GenerateFeedbackApp()
        args = [job["assignment"], f"--student={student}", "--force"]
        error = None
        try:
            app.initialize(args)
            # after the course's config (which may hold install's block): this run's mode
            _isolate_grade_feedback(app.config, job["errors"], True, on_notebook=record)  # noqa: F821
            app.start()
        except SystemExit as e:
            if e.code not in (None, 0):
                error = f"nbgrader generate_feedback exited {e.code}"
        except Exception as e:  # one student's failure is reported, the others still run
            error = f"{type(e).__name__}: {e}"
        refused = [n for n, r in notebooks.items() if "refused" in r]
        if error is None and refused:
            error = f"refused: {', '.join(refused)}"
        if error is None:
            with open(stamp, "w") as f:
                f.write(job["errors"])
        print(json.dumps({"student": student, "ok": error is None, "error": error, "notebooks": notebooks}),
              flush=True)
        GenerateFeedbackApp.clear_instance()


_isolate_grade_feedback_run()
