"""The compositional tiny world (issue 13): GenEval-shaped prompts over coloured shapes, their
renderer and judges. Lives beside the first tiny world (``alignzoo.tinyworld.grammar``)."""
