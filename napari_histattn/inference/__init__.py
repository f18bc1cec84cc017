"""Running a trained model over a slide: generators that yield progress and return a result."""
