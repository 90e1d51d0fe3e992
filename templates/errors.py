"""The one error templates raise: a template or path an operator must fix."""


class TemplateError(ValueError):
    """A request template or extract path that cannot be used, with the reason."""


class ExtractError(ValueError):
    """A worker response that does not hold what the extract path asks for."""
