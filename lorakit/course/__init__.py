"""The course's helpers: a notebook's first cell and profile (:mod:`~lorakit.course.notebook`), the ipywidgets
explorers (:mod:`~lorakit.course.widgets`) and each notebook's exercise checkers (:mod:`~lorakit.course.exercises`)."""
