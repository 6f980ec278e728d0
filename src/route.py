def _isolate_grade(c, twins, languages):
    """Route every notebook nbgrader autogrades to the sandboxed twin of its own kernel.

    `twins` maps a kernelspec name to its twin's name, `languages` each twin to its language.
    nbgrader's Execute step is replaced by one that picks the twin the way nbclient picks a
    kernel (the notebook's `kernelspec.name`, or an explicit `Execute.kernel_name`), or, for a
    notebook that names no kernel, by its language (`kernelspec.language`, `language_info.name`).
    A notebook whose kernel has no twin, or whose language is not its twin's, is never run.
    (isolate-grade's src/route.py: written into nbgrader_config.py by `isolate-grade install`,
    and used by the batch with its own twins.)
    """
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute

    class KernelNotSandboxed(Exception):
        pass

    def route(nb, explicit):
        ks = nb.metadata.get("kernelspec") or {}
        li = nb.metadata.get("language_info") or {}
        lang = str(ks.get("language") or li.get("name") or "").lower() or None
        name = explicit or ks.get("name")
        if name in twins.values():
            twin = name
        elif name:
            twin = twins.get(name)
            if twin is None:
                raise KernelNotSandboxed(
                    f"the notebook's kernel {name!r} has no sandboxed twin (sandboxed: {sorted(twins)}), "
                    "so it is not run: sandbox it with `isolate-grade install --kernel NAME`")
        elif lang:
            found = sorted({t for t, tl in languages.items() if tl == lang})
            if lang == "python" and twins.get("python3"):
                found = [twins["python3"]]
            if len(found) != 1:
                raise KernelNotSandboxed(
                    f"the notebook names no kernel, and {len(found)} sandboxed kernels are for its language "
                    f"{lang!r}, so it is not run: set its kernel (metadata.kernelspec.name)")
            twin = found[0]
        else:
            twin = twins.get("python3")
            if twin is None:
                raise KernelNotSandboxed("the notebook names no kernel and there is no sandboxed python3, so it is not run")
        if lang and languages.get(twin) != lang:
            raise KernelNotSandboxed(
                f"the notebook is in {lang!r}, but its kernel {name!r} runs {languages.get(twin)!r}, "
                "so it is not run: fix the notebook's metadata (kernelspec, language_info)")
        return twin

    class SandboxedExecute(Execute):
        def preprocess(self, nb, resources, *args, **kwargs):
            before = self.kernel_name
            self.kernel_name = route(nb, before)
            try:
                return super().preprocess(nb, resources, *args, **kwargs)
            finally:
                self.kernel_name = before

    steps = c.Autograde.get("autograde_preprocessors") or Autograde.class_traits()["autograde_preprocessors"].default()
    if not any(isinstance(s, type) and issubclass(s, Execute) for s in steps):
        raise ValueError(f"nbgrader's Execute step is not among the autograde preprocessors {steps}")
    c.Autograde.autograde_preprocessors = [
        SandboxedExecute if isinstance(s, type) and issubclass(s, Execute) else s for s in steps]
