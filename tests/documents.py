"""Real documents, made at test time with the libraries that write them (nothing is
downloaded): Word (python-docx, plus the XML Word itself writes for footnotes, text
boxes, equations and numbered "List Paragraph" bullets), PDF (reportlab, and a few by
hand where a broken or hostile file is the point), Excel (openpyxl, xlwt), PowerPoint
(python-pptx), EPUB (a zip, as the spec lays it out), notebooks, feeds and bombs.

tests/conftest.py exposes the common ones as fixtures.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib

import docx
import openpyxl
import pptx
import xlwt
from docx.oxml import parse_xml
from docx.oxml.ns import nsdecls
from reportlab.lib import colors
from reportlab.lib.pagesizes import letter
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


# --- Word ---------------------------------------------------------------------------


def _save(document: docx.document.Document) -> bytes:
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def word_report() -> bytes:
    """A Word file as people write them: a one-word first paragraph, bullets in the
    "List Paragraph" style (numbering set on the paragraph, as Word does), a numbered
    list, a table with a header row, a hyperlink, a footnote, a text box, an equation."""
    document = docx.Document()
    document.add_paragraph("Apple")
    document.add_heading("Orchard report", level=1)
    intro = document.add_paragraph("The harvest was good; see ")
    _hyperlink(document, intro, "https://example.org/harvest", "the harvest notes")
    intro.add_run(".")
    bullet_id = document.styles["List Bullet"].element.pPr.numPr.numId.val
    for text in ("Pruning in March", "Picking in September"):
        item = document.add_paragraph(text, style="List Paragraph")
        item._p.get_or_add_pPr().append(
            parse_xml(
                f'<w:numPr {nsdecls("w")}><w:ilvl w:val="0"/>'
                f'<w:numId w:val="{bullet_id}"/></w:numPr>'
            )
        )
    document.add_paragraph("Weigh the crates", style="List Number")
    document.add_paragraph("Sell at market", style="List Number")
    table = document.add_table(rows=3, cols=2)
    for row, values in zip(
        table.rows, [("Variety", "Tonnes"), ("Cox", "12"), ("Gala", "30")], strict=True
    ):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    footnoted = document.add_paragraph("Yields are estimates")
    footnoted._p.append(
        parse_xml(
            f'<w:r {nsdecls("w")}><w:rPr><w:rStyle w:val="FootnoteReference"/></w:rPr>'
            '<w:footnoteReference w:id="1"/></w:r>'
        )
    )
    boxed = document.add_paragraph()
    boxed._p.append(
        parse_xml(
            f'<w:r {nsdecls("w")} xmlns:v="urn:schemas-microsoft-com:vml"><w:pict>'
            '<v:shape style="width:200pt;height:40pt"><v:textbox><w:txbxContent>'
            "<w:p><w:r><w:t>Boxed: picked by hand</w:t></w:r></w:p>"
            "</w:txbxContent></v:textbox></v:shape></w:pict></w:r>"
        )
    )
    equation = document.add_paragraph("Area: ")
    equation._p.append(
        parse_xml(
            '<m:oMath xmlns:m="http://schemas.openxmlformats.org/officeDocument/2006/math">'
            "<m:r><m:t>a</m:t></m:r><m:r><m:t>=</m:t></m:r><m:sSup><m:e><m:r><m:t>r</m:t>"
            "</m:r></m:e><m:sup><m:r><m:t>2</m:t></m:r></m:sup></m:sSup></m:oMath>"
        )
    )
    return _with_footnote(_save(document), "Measured by the orchard's own scale.")


def _hyperlink(document: docx.document.Document, paragraph, url: str, text: str) -> None:
    rel = paragraph.part.relate_to(
        url,
        "http://schemas.openxmlformats.org/officeDocument/2006/relationships/hyperlink",
        is_external=True,
    )
    paragraph._p.append(
        parse_xml(
            f'<w:hyperlink {nsdecls("w", "r")} r:id="{rel}"><w:r><w:t>{text}</w:t>'
            "</w:r></w:hyperlink>"
        )
    )


def _with_footnote(data: bytes, text: str) -> bytes:
    """Add word/footnotes.xml (python-docx writes none) holding footnote 1."""
    footnotes = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:footnotes xmlns:w="{W}">'
        '<w:footnote w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p>'
        '</w:footnote><w:footnote w:type="continuationSeparator" w:id="0"><w:p><w:r>'
        '<w:continuationSeparator/></w:r></w:p></w:footnote><w:footnote w:id="1"><w:p>'
        f"<w:r><w:t>{text}</w:t></w:r></w:p></w:footnote></w:footnotes>"
    ).encode()
    rel = (
        b'<Relationship Id="rIdFootnotes" Type="http://schemas.openxmlformats.org/'
        b'officeDocument/2006/relationships/footnotes" Target="footnotes.xml"/>'
    )
    override = (
        b'<Override PartName="/word/footnotes.xml" ContentType="application/'
        b'vnd.openxmlformats-officedocument.wordprocessingml.footnotes+xml"/>'
    )

    def change(name: str, content: bytes) -> bytes:
        if name == "word/_rels/document.xml.rels":
            return content.replace(b"</Relationships>", rel + b"</Relationships>")
        if name == "[Content_Types].xml":
            return content.replace(b"</Types>", override + b"</Types>")
        return content

    return rezip(data, change, add={"word/footnotes.xml": footnotes})


def word_strict() -> bytes:
    """The same kind of file saved as Strict Open XML (other namespaces)."""
    document = docx.Document()
    document.add_heading("Strict minutes", level=1)
    document.add_paragraph("Saved as Strict Open XML.")
    swaps = {
        b"http://schemas.openxmlformats.org/wordprocessingml/2006/main": b"http://purl.oclc.org/ooxml/wordprocessingml/main",
        b"http://schemas.openxmlformats.org/officeDocument/2006/relationships": b"http://purl.oclc.org/ooxml/officeDocument/relationships",
    }

    def change(name: str, content: bytes) -> bytes:
        for old, new in swaps.items():
            content = content.replace(old, new)
        return content

    return rezip(_save(document), change)


def word_sized(paragraphs: int, words: int = 60) -> bytes:
    document = docx.Document()
    for index in range(paragraphs):
        if index % 10 == 0:
            document.add_heading(f"Chapter {index // 10 + 1}", level=1)
        document.add_paragraph(" ".join(f"word{index}x{i}" for i in range(words)))
    return _save(document)


def word_bomb(megabytes: int = 10) -> bytes:
    """A small .docx whose document.xml inflates to `megabytes` of paragraphs."""
    document = docx.Document()
    document.add_paragraph("seed")
    paragraph = b"<w:p><w:r><w:t>" + b"bomb " * 40 + b"</w:t></w:r></w:p>"
    body = paragraph * (megabytes * 1024 * 1024 // len(paragraph))

    def change(name: str, content: bytes) -> bytes:
        if name == "word/document.xml":
            return content.replace(b"<w:body>", b"<w:body>" + body, 1)
        return content

    return rezip(_save(document), change, level=9)


def zip_claiming(gigabytes: float, name: str = "word/document.xml") -> bytes:
    """A zip whose one member really inflates to `gigabytes` of zeros (a zip bomb)."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open(name, "w", force_zip64=True) as member,
    ):
        block = bytes(8 * 1024 * 1024)
        for _ in range(int(gigabytes * 1024 / 8)):
            member.write(block)
    return out.getvalue()


def rezip(data: bytes, change, add: dict[str, bytes] | None = None, level: int = 6) -> bytes:
    """Copy a zip, replacing each member by change(name, content) (None drops it)."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as target,
    ):
        for info in source.infolist():
            content = change(info.filename, source.read(info))
            if content is not None:
                target.writestr(info.filename, content)
        for name, content in (add or {}).items():
            target.writestr(name, content)
    return out.getvalue()


# --- PDF ----------------------------------------------------------------------------


def pdf_report(pages: int = 3, rows: int = 3) -> bytes:
    """A reportlab PDF: per page a heading, wrapped paragraphs and a ruled table, with a
    running header and a page-number footer on every page."""
    out = io.BytesIO()
    styles = getSampleStyleSheet()
    story = []
    for page in range(1, pages + 1):
        story.append(Paragraph(f"Chapter {page}", styles["Heading1"]))
        story.append(
            Paragraph(
                f"Chapter {page} opens with a paragraph long enough to wrap over several lines "
                "of the page, so that a reader of the text must join the lines back together "
                "again; the hyphen-free words make that easy to check afterwards. " * 2,
                styles["Normal"],
            )
        )
        story.append(Spacer(1, 12))
        story.append(Paragraph(f"A second, shorter paragraph on page {page}.", styles["Normal"]))
        table = Table(
            [["Source", "MWh", "Share"]]
            + [[f"Plant {page}.{r}", str(100 + r), f"{10 + r}%"] for r in range(rows)]
        )
        table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.black)]))
        story.append(table)
        if page < pages:
            story.append(PageBreak())

    def furniture(canvas, document) -> None:
        canvas.setFont("Helvetica", 9)
        canvas.drawString(72, 760, "ACME Energy - Annual report")
        canvas.drawString(290, 30, f"Page {document.page}")

    SimpleDocTemplate(out, pagesize=letter).build(
        story, onFirstPage=furniture, onLaterPages=furniture
    )
    return out.getvalue()


def pdf_receipt() -> bytes:
    """A till receipt: separator lines of = and *, and a barcode in asterisks."""
    out = io.BytesIO()
    from reportlab.pdfgen import canvas as pdfcanvas

    page = pdfcanvas.Canvas(out, pagesize=(220, 400))
    page.setFont("Courier", 9)
    lines = [
        "CORNER SHOP",
        "==========================",
        "Milk 1L            1.20",
        "Bread              2.10",
        "Apples 1kg         3.40",
        "--------------------------",
        "TOTAL              6.70",
        "**************************",
        "*0042-1187-2231*",
        "Thank you for shopping",
    ]
    y = 380
    for line in lines:
        page.drawString(10, y, line)
        y -= 14
    page.save()
    return out.getvalue()


def pdf_sharing_one_stream(pages: int, operators: int = 4000) -> bytes:
    """A small PDF whose pages all draw one compressed content stream of many text
    operators: each page costs a parser the whole stream (a parser bomb)."""
    content = b"BT /F1 12 Tf 72 720 Td " + b"(x) Tj 1 0 Td " * operators + b"ET"
    packed = zlib.compress(content, 9)
    kids = " ".join(f"{5 + i} 0 R" for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(packed), packed),
    ]
    objects += [
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        b" /Resources << /Font << /F1 3 0 R >> >> /Contents 4 0 R >>"
    ] * pages
    return _pdf_file(objects)


def _pdf_file(objects: list[bytes]) -> bytes:
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref_at,
    )
    return bytes(out)


def pdf_scanned() -> bytes:
    """A page that is one image and no text, as a scanner makes it."""
    return _pdf_file(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
            b"<< /Type /XObject /Subtype /Image /Width 1 /Height 1 /ColorSpace /DeviceGray"
            b" /BitsPerComponent 8 /Length 1 >>\nstream\n\x80\nendstream",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
            b" /Resources << /XObject << /Im1 3 0 R >> >> /Contents 5 0 R >>",
            b"<< /Length 31 >>\nstream\nq 468 0 0 648 72 72 cm /Im1 Do Q\nendstream",
        ]
    )


def pdf_encrypted(user_password: str, owner_password: str | None = None) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(pdf_report(pages=1))).pages:
        writer.add_page(page)
    writer.encrypt(user_password, owner_password, algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# --- spreadsheets and slides --------------------------------------------------------


def xlsx_book(rows: int = 3) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Cities"
    sheet.append(["City", "Country", "Population"])
    for index in range(rows):
        sheet.append([f"City {index}", "Peru" if index % 2 else "France", 1000 + index])
    second = book.create_sheet("Notes")
    second.append(["Source", "Census 2020"])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def xls_book() -> bytes:
    book = xlwt.Workbook()
    sheet = book.add_sheet("Prices")
    for row, values in enumerate([("Item", "Price"), ("Tea", 2.5), ("Cake", 4)]):
        for column, value in enumerate(values):
            sheet.write(row, column, value)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def pptx_deck() -> bytes:
    deck = pptx.Presentation()
    first = deck.slides.add_slide(deck.slide_layouts[1])
    first.shapes.title.text = "Quarterly review"
    first.placeholders[1].text = "Revenue grew in every region"
    second = deck.slides.add_slide(deck.slide_layouts[5])
    second.shapes.title.text = "Numbers"
    shape = second.shapes.add_table(
        2, 2, pptx.util.Inches(1), pptx.util.Inches(2), pptx.util.Inches(4), pptx.util.Inches(1)
    )
    for (r, c), value in {
        (0, 0): "Region",
        (0, 1): "Growth",
        (1, 0): "North",
        (1, 1): "12%",
    }.items():
        shape.table.cell(r, c).text = value
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def epub_book() -> bytes:
    """A minimal EPUB 3: the mimetype first and stored, a container, a package, a chapter."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as book:
        book.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip")
        book.writestr(
            "META-INF/container.xml",
            '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:'
            'opendocument:xmlns:container"><rootfiles><rootfile full-path="OEBPS/content.opf"'
            ' media-type="application/oebps-package+xml"/></rootfiles></container>',
        )
        book.writestr(
            "OEBPS/content.opf",
            '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0"'
            ' unique-identifier="id"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
            '<dc:identifier id="id">urn:test:1</dc:identifier><dc:title>Sea stories</dc:title>'
            "<dc:creator>A. Sailor</dc:creator><dc:language>en</dc:language></metadata>"
            '<manifest><item id="c1" href="c1.xhtml" media-type="application/xhtml+xml"/>'
            '</manifest><spine><itemref idref="c1"/></spine></package>',
        )
        book.writestr(
            "OEBPS/c1.xhtml",
            '<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>One'
            "</title></head><body><h1>The storm</h1><p>The <em>sea</em> rose at dawn.</p>"
            "<ul><li>Reef the sails</li><li>Bail</li></ul></body></html>",
        )
    return out.getvalue()


def notebook() -> bytes:
    return json.dumps(
        {
            "cells": [
                {
                    "cell_type": "markdown",
                    "metadata": {},
                    "source": ["# Analysis\n", "Some notes."],
                },
                {
                    "cell_type": "code",
                    "metadata": {},
                    "execution_count": 1,
                    "outputs": [],
                    "source": ["print(1 + 1)"],
                },
            ],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    ).encode()


RSS = (
    b'<?xml version="1.0"?><rss version="2.0"><channel><title>Harbour news</title>'
    b"<description>Daily</description><item><title>Ferry delayed</title>"
    b"<description>&lt;p&gt;Fog in the &lt;b&gt;bay&lt;/b&gt;.&lt;/p&gt;</description>"
    b"<pubDate>Mon, 01 Jun 2026 08:00:00 GMT</pubDate></item></channel></rss>"
)

BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    b"<lolz>&lol3;</lolz>"
)
