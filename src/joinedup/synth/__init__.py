"""A synthetic North West London-like population and its providers' feeds.

``generate`` builds practices in multidisciplinary groups, their patients and everything that
happens to them, and writes what each provider would send (GP FHIR bundles, hospital HL7 v2 ADT,
community, mental-health and social-care CSV extracts) with the ground truth beside it;
``replay`` sends it to a running JoinedUp. See docs/synthetic-population.md.
"""

from joinedup.synth.generate import generate
from joinedup.synth.noise import Noise

__all__ = ["Noise", "generate"]
