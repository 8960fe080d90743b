"""One way for the docks to show a napari notification ("error", "warning" or "info")."""


def notify(kind: str, message: str) -> None:
    """Show ``message`` as a napari notification of ``kind``."""
    from napari.utils import notifications

    {"error": notifications.show_error, "warning": notifications.show_warning, "info": notifications.show_info}[kind](
        message
    )
