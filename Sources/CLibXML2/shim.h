// libxml2 built with ICU (as Debian's is) includes <unicode/ucnv.h> from <libxml/encoding.h>,
// whose ICU types then clash with Foundation's own copy of ICU in any module that sees both
// ("'UErrorCode' has different definitions in different modules"). Keel never touches
// libxml2's ICU converters, so the ICU header is skipped and the two ICU types libxml2's
// structures mention get private names of the same size.
#define UCNV_H 1
#define UConverter KeelXMLUConverter
#define UChar KeelXMLUChar
typedef struct KeelXMLUConverter KeelXMLUConverter;
typedef unsigned short KeelXMLUChar;

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>

#undef UConverter
#undef UChar
