"""Rendering of untrusted text: Markdown only through a sanitizer, never raw HTML.

Guidelines are written by curators and read by every labeler of the project, so they may not
load anything from elsewhere or disguise where a link goes: no image is rendered (its address
is shown as text: a tracking pixel loads nothing); a link is a link only when it is absolute
http(s) or mailto (or a #fragment of the page), with rel="nofollow" and its address shown beside
its text when the two differ; any other link (protocol-relative `//host`, `/\\host`, relative,
other schemes) is plain text with its address shown.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element

import markdown as markdown_lib
import nh3
from django import template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

register = template.Library()

LINK_REL = "noopener noreferrer nofollow"
TAGS = nh3.ALLOWED_TAGS - {"img"}


def link_allowed(href: str) -> bool:
    if href.startswith("#"):
        return True
    if any(c.isspace() or c == "\\" or ord(c) < 32 for c in href):
        return False
    try:
        parts = urlsplit(href)
    except ValueError:
        return False
    if parts.scheme == "mailto":
        return bool(parts.path)
    return parts.scheme in {"http", "https"} and bool(parts.hostname)


def _append_text(element: Element, text: str) -> None:
    if len(element):
        element[-1].tail = (element[-1].tail or "") + text
    else:
        element.text = (element.text or "") + text


class _AddressesShown(Treeprocessor):
    def run(self, root: Element) -> None:
        for element in root.iter():
            if element.tag == "img":
                alt, src = element.get("alt", ""), element.get("src", "")
                element.tag = "span"
                element.attrib.clear()
                element.set("class", "image-address")
                element.text = f"[image{': ' + alt if alt else ''}] {src}"
            elif element.tag == "a":
                href = element.get("href", "")
                shown = "".join(element.itertext()).strip()
                if not link_allowed(href):
                    element.tag = "span"
                    element.attrib.clear()
                    if href and shown != href:
                        _append_text(element, f" ({href})")
                elif not href.startswith("#") and shown not in (href, href.removeprefix("mailto:")):
                    element.tail = f" ({href})" + (element.tail or "")


class _AddressesShownExtension(Extension):
    def extendMarkdown(self, md) -> None:  # noqa: N802 - Markdown's name
        # After "inline" (20), which makes the <a> and <img> elements.
        md.treeprocessors.register(_AddressesShown(md), "addresses_shown", 15)


def _attribute(element: str, attribute: str, value: str) -> str | None:
    # Raw HTML in the Markdown skips the tree above: the same rule for its links, no address.
    if element == "a" and attribute == "href" and not link_allowed(value):
        return None
    return value


@register.filter
def markdown_safe(text: str) -> SafeString:
    """Markdown (with fenced code blocks) to HTML, then cleaned by nh3: no script, no handlers,
    no images, links only to absolute http(s)/mailto addresses, each address visible."""
    html = markdown_lib.markdown(
        text or "", extensions=["fenced_code", "sane_lists", _AddressesShownExtension()]
    )
    cleaned = nh3.clean(html, tags=TAGS, attribute_filter=_attribute, link_rel=LINK_REL)
    return mark_safe(cleaned)  # noqa: S308 - nh3 removed everything unsafe


# Characters that a page would otherwise show as nothing, or that move what follows them: the C0
# controls but tab and newline, DEL and the C1 controls, and the bidirectional overrides and
# isolates (a right-to-left override makes "txt.exe" read "exe.txt"). A model's sample may hold
# any of them; a labeler is shown each as a visible symbol, never the character itself. A CR
# that ends a line before its LF is a line end, kept.
_CONTROLS = re.compile("\r(?!\n)|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def control_symbol(char: str) -> str:
    """The visible stand-in of one control character: U+2400's pictures for C0 (␀ … ␟) and
    DEL (␡), `<U+0085>` for the others."""
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    return f"<U+{code:04X}>"


def _control_span(match: re.Match) -> str:
    char = match.group()
    return f'<span class="control" title="U+{ord(char):04X}">{escape(control_symbol(char))}</span>'


@register.filter
def visible_controls(text: str) -> SafeString:
    """`text` escaped, with each control character in it shown as a visible symbol marked as
    such: `<span class="control" title="U+0007">␇</span>`."""
    return mark_safe(_CONTROLS.sub(_control_span, escape(text or "")))  # noqa: S308 - escaped
